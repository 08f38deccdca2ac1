"""benchmarks/_common.py: the benchmark scripts' machine info and checked, atomic CSV append,
and the checked-in result files stay appendable by the scripts that wrote them."""
import ast
import csv
import os
import sys

import numpy as np
import pytest

# ---------------------------------------------------------------------------------------
# benchmarks/_common.py: the benchmark scripts' CSV append (built on atomic_write)
# ---------------------------------------------------------------------------------------

def _bench_common():
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks", "_common.py")
    spec = importlib.util.spec_from_file_location("bench_common_under_test", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_bench_csv_append_header_check_and_atomicity(tmp_path):
    common = _bench_common()
    path = str(tmp_path / "results" / "bench_x.csv")
    cols = ["impl", "ms", "note"]
    assert common.append_csv(path, cols, [{"impl": "a", "ms": 1.5}]) == 1
    common.append_csv(path, cols, [{"impl": "b", "ms": 2.0, "note": "x, y"}])
    with open(path, newline="") as f:
        assert list(csv.reader(f)) == [cols, ["a", "1.5", ""], ["b", "2.0", "x, y"]]
    before = open(path, "rb").read()
    assert before.count(b"\r\n") == 3  # csv's line ends, as the files in benchmarks/results/ have
    with pytest.raises(ValueError, match=r"header has the columns \['impl', 'ms', 'note'\], this script writes"):
        common.append_csv(path, ["impl", "ms"], [{"impl": "c", "ms": 3}])
    with pytest.raises(ValueError, match="not in fieldnames"):  # a misspelt column is not dropped
        common.append_csv(path, cols, [{"impl": "c", "msec": 3}])
    assert open(path, "rb").read() == before and os.listdir(tmp_path / "results") == ["bench_x.csv"]


def test_bench_csv_headers_in_results_match_the_scripts():
    """The checked-in result files stay appendable by the scripts that wrote them."""
    common = _bench_common()
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for name, script in (("bench_metrics.csv", "bench_metrics.py"), ("bench_loss.csv", "bench_loss.py"),
                         ("bench_qdrant.csv", "bench_qdrant.py"), ("build_sm90.csv", "build_sm90.py"),
                         ("bench_train.csv", "bench_train.py"), ("bench_ranking.csv", "bench_ranking.py")):
        path = os.path.join(root, "benchmarks", "results", name)
        if not os.path.isfile(path):
            continue
        src = open(os.path.join(root, "benchmarks", script)).read()
        cols = next(ast.literal_eval(n.value) for n in ast.parse(src).body
                    if isinstance(n, ast.Assign) and getattr(n.targets[0], "id", "") == "COLUMNS")
        common.check_csv_header(path, cols)


def test_bench_machine_info_and_versions():
    common = _bench_common()
    m = common.machine()
    assert set(m) == {"cpu", "cores", "python"} and m["cores"].isdigit() and m["cpu"]
    v = common.package_versions({"numpy": "numpy", "pytest": "pytest", "nope": "no-such-dist-gcl", "nomod": "no_such_mod_gcl"})
    assert v["numpy"] == np.__version__ and v["pytest"] == pytest.__version__
    assert v["nope"] == "-" and v["nomod"] == "-"
    load = common.loadavg()
    assert load == "?" or len(load.split("/")) == 3
    here = os.path.dirname(os.path.abspath(sys.argv[0]))
    assert common.command_line(["--k", "a b"], start=here) == os.path.basename(sys.argv[0]) + " --k 'a b'"
