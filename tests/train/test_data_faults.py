"""gcl_train.data against hostile files: BOMs, broken gzip, bad scores, odd paths, huge records.

Every case ends in one DataFormatError (or FileNotFoundError) naming the file, and the
line where there is one, or in a documented, correct reading; never a raw traceback,
a hang or a silently wrong result.
"""
import gzip
import json
import os

import pytest

from gcl_train.data import (
    DataFormatError, MarqoGSDataset, ReadStats, iter_corpus, iter_pairs, read_ground_truth, read_queries,
)
from gcl_train.data import jsonstream, pairs
from gcl_train.data.jsonstream import iter_json_lines, iter_json_members

H = "query,product_id,score_linear\n"
BOM = "\ufeff"


def write(path, data):
    data = data.encode("utf-8") if isinstance(data, str) else data
    with open(path, "wb") as f:
        f.write(data)
    return str(path)


def gz(data):
    return gzip.compress(data.encode("utf-8") if isinstance(data, str) else data, mtime=0)


def csv_text(n):
    return H + "".join(f"query {i},id-{i},{i % 100 + 1}\n" for i in range(n))


# ---------------------------------------------------------------------------------------
# 1. a UTF-8 byte-order mark, in every reader, plain and gzipped
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_bom_then_quoted_header(tmp_path, suffix):
    text = BOM + '"query","product_id","score_linear"\n"red dress","id-1","100"\n'
    path = write(tmp_path / ("s.csv" + suffix), gz(text) if suffix else text)
    recs = list(iter_pairs(path))
    assert [(r.query, r.product_id, r.score_linear, r.line) for r in recs] == [("red dress", "id-1", 100.0, 2)]


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_bom_in_json_files(tmp_path, suffix):
    def put(name, text):
        return write(tmp_path / (name + suffix), gz(BOM + text) if suffix else BOM + text)

    assert dict(iter_corpus(put("corpus_1.json", '{"a": {"title": "x"}}'))) == {"a": {"title": "x"}}
    assert [k for k, _ in iter_corpus(put("c.jsonl", '{"id": "a"}\n{"id": "b"}\n'))] == ["a", "b"]
    assert read_ground_truth(put("gt.json", '{"q": {"a": 3}}')) == {"q": {"a": 3}}
    assert read_queries(put("q.json", '["q"]')) == ["q"]


# ---------------------------------------------------------------------------------------
# 2. truncated and corrupt gzip streams
# ---------------------------------------------------------------------------------------

def test_truncated_csv_gz_names_file_and_last_line(tmp_path):
    blob = gz(csv_text(20_000))
    path = write(tmp_path / "query_0_product_id_0.csv.gz", blob[: len(blob) // 2])
    n = 0
    with pytest.raises(DataFormatError, match=r"query_0_product_id_0\.csv\.gz: truncated gzip stream after line (\d+) \(EOFError: ") as ei:
        for _ in iter_pairs(path):
            n += 1
    last = int(ei.value.what.split("after line ")[1].split()[0])
    assert n > 1000 and last >= n + 1  # header + every yielded row were read before the end


@pytest.mark.parametrize("damage", ["not_gzip", "middle", "trailing"])
def test_corrupt_csv_gz(tmp_path, damage):
    blob = gz(csv_text(5_000))
    bad = {"not_gzip": csv_text(3).encode(), "middle": blob[:2000] + b"\x00" * 100 + blob[2100:],
           "trailing": blob + b"garbage!"}[damage]
    path = write(tmp_path / "s.csv.gz", bad)
    with pytest.raises(DataFormatError, match=r"s\.csv\.gz: (not a gzip file|corrupt gzip stream)"):
        list(iter_pairs(path))


def test_truncated_corpus_and_ground_truth_gz(tmp_path):
    corpus = {f"id-{i}": {"title": f"product {i} " + "abcdefghij"[i % 10] * (i % 37)} for i in range(20_000)}
    blob = gz(json.dumps(corpus, indent=0))
    path = write(tmp_path / "corpus_1.json.gz", blob[: len(blob) // 2])
    with pytest.raises(DataFormatError, match=r"corpus_1\.json\.gz: truncated gzip stream after line \d+ \(\d+ records read\) \(EOFError"):
        list(iter_corpus(path))
    lines = gz("".join(json.dumps({"id": k, **v}) + "\n" for k, v in corpus.items()))
    path = write(tmp_path / "corpus_1.jsonl.gz", lines[: len(lines) // 2])
    with pytest.raises(DataFormatError, match=r"corpus_1\.jsonl\.gz: truncated gzip stream after line \d+ \(EOFError"):
        list(iter_corpus(path))
    gt = {f"query {i}": {f"id-{j}": j % 100 + 1 for j in range(i % 20 + 1)} for i in range(5_000)}
    blob = gz(json.dumps(gt, indent=1))
    path = write(tmp_path / "q_gt_test.json.gz", blob[: len(blob) // 2])
    with pytest.raises(DataFormatError, match=r"q_gt_test\.json\.gz: truncated gzip stream after line \d+ \(EOFError"):
        read_ground_truth(path)
    path = write(tmp_path / "q_queries.json.gz", b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataFormatError, match=r"q_queries\.json\.gz: (corrupt gzip stream|truncated gzip stream)"):
        read_queries(path)


def test_gzip_content_without_gz_suffix_is_read(tmp_path):
    path = write(tmp_path / "query_0_product_id_0.csv", gz(csv_text(10)))
    assert len(list(iter_pairs(path))) == 10
    path = write(tmp_path / "corpus_1.json", gz('{"a": {}}'))
    assert [k for k, _ in iter_corpus(path)] == ["a"]


# ---------------------------------------------------------------------------------------
# 3. scores validated while the split is scanned, with file and line
# ---------------------------------------------------------------------------------------

def test_check_score():
    from gcl_train.data import check_score

    assert check_score("f.csv", 3, "score_linear", "12.5") == 12.5
    assert check_score("f.csv", 3, "score_linear", 7) == 7.0 and check_score("f.csv", 3, "s", 0) == 0.0
    assert check_score("f.csv", 3, "s", "") is None and check_score("f.csv", 3, "s", None) is None
    for bad in ("high", "nan", "NaN", "inf", "-inf", "-1", -0.5, float("nan"), float("inf"), True, "1,5"):
        with pytest.raises(DataFormatError, match=r"f\.csv:3: column 's'"):
            check_score("f.csv", 3, "s", bad)


@pytest.mark.parametrize("cell,match", [
    ("high", "expected a number, got 'high'"),
    ("nan", "expected a finite number, got 'nan'"),
    ("inf", "expected a finite number, got 'inf'"),
    ("-3", "expected a score >= 0, got '-3'"),
])
def test_iter_pairs_numeric_validates_with_file_and_line(tmp_path, cell, match):
    path = write(tmp_path / "s.csv", "query,product_id,score_linear,my_score\nq,a,100,5\nq,b,99,4\nq,c,98," + cell + "\n")
    with pytest.raises(DataFormatError, match=r"s\.csv:4: column 'my_score': " + match):
        list(iter_pairs(path, numeric=("my_score",)))
    path = write(tmp_path / "t.csv", "query,product_id,score_linear\nq,a,100\nq,c," + cell + "\n")
    with pytest.raises(DataFormatError, match=r"t\.csv:3: column 'score_linear': " + match):
        list(iter_pairs(path, numeric=("score_linear",)))
    ds_root = tmp_path / "ds"
    ds_root.mkdir()
    write(ds_root / "query_0_product_id_0.csv", "query,product_id,score_linear\nq,c," + cell + "\n")
    with pytest.raises(DataFormatError, match=r"query_0_product_id_0\.csv:2: column 'score_linear'"):
        list(MarqoGSDataset(str(ds_root)).iter_pairs("in_domain", numeric=("score_linear",)))


def test_iter_pairs_numeric_converts_and_missing_is_still_counted(tmp_path):
    path = write(tmp_path / "s.csv", "query,product_id,my_score\nq,a,5\nq,b,\nq,c,0.25\n")
    stats = ReadStats()
    recs = list(iter_pairs(path, required=("query", "product_id", "my_score"), numeric=("my_score",), stats=stats))
    assert [r.get("my_score") for r in recs] == [5.0, 0.25] and isinstance(recs[0].extra["my_score"], float)
    assert stats.skipped == {"missing required field 'my_score'": 1}
    # projected reads keep the numeric column
    assert [r.get("my_score") for r in iter_pairs(path, columns=(), numeric=("my_score",))] == [5.0, None, 0.25]
    with pytest.raises(DataFormatError, match=r"s\.csv:1: header has no 'other' column"):
        list(iter_pairs(path, numeric=("other",)))
    with pytest.raises(ValueError, match="numeric"):
        list(iter_pairs(path, numeric="my_score"))


def test_iter_pairs_numeric_on_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.parquet as pq

    path = str(tmp_path / "s.parquet")
    pq.write_table(pa.table({"query": ["q", "q"], "product_id": ["a", "b"], "score_linear": [1.0, float("nan")]}), path)
    with pytest.raises(DataFormatError, match=r"s\.parquet:2: column 'score_linear': expected a finite number"):
        list(iter_pairs(path, numeric=("score_linear",)))


# ---------------------------------------------------------------------------------------
# hostile inputs, second pass
# ---------------------------------------------------------------------------------------

def test_crlf_and_quoted_newlines(tmp_path):
    text = 'query,product_id,title\r\n"a\r\nb",p1,"t, 1"\r\nq,p2,t2\r\n'
    recs = list(iter_pairs(write(tmp_path / "s.csv", text)))
    assert [(r.query, r.product_id, r.title, r.line) for r in recs] == [("a\r\nb", "p1", "t, 1", 2), ("q", "p2", "t2", 4)]
    lines = list(iter_json_lines(write(tmp_path / "c.jsonl", '{"id": "a"}\r\n\r\n{"id": "b"}\r\n')))
    assert lines == [(1, {"id": "a"}), (3, {"id": "b"})]


def test_lone_cr_line_endings_get_a_hint(tmp_path):
    path = write(tmp_path / "s.csv", H.replace("\n", "\r") + "q,p,1\r")
    with pytest.raises(DataFormatError, match=r"s\.csv:1: .*lone CR"):
        list(iter_pairs(path))


def test_nul_bytes(tmp_path):
    path = write(tmp_path / "s.csv", H + "q,p,1\nq\x00x,p,2\n")
    with pytest.raises(DataFormatError, match=r"s\.csv:3: NUL byte"):
        list(iter_pairs(path))
    path = write(tmp_path / "z.csv", H + "q,p,1\n" + "\x00" * 4096)  # a file zero-filled after a crash
    with pytest.raises(DataFormatError, match=r"z\.csv:3: NUL byte"):
        list(iter_pairs(path))


def test_utf16_and_latin1_files_get_a_hint(tmp_path):
    path = write(tmp_path / "s.csv", H.encode("utf-16"))
    with pytest.raises(DataFormatError, match=r"s\.csv:1: not valid UTF-8 .*UTF-16"):
        list(iter_pairs(path))
    path = write(tmp_path / "c.json", '{"a": {"title": "caf\xe9"}}'.encode("latin-1"))
    with pytest.raises(DataFormatError, match=r"c\.json:1: not valid UTF-8"):
        list(iter_corpus(path))


def test_huge_record_is_refused_not_slurped(tmp_path, monkeypatch):
    monkeypatch.setattr(pairs, "MAX_RECORD_BYTES", 1 << 16)
    monkeypatch.setattr(jsonstream, "MAX_VALUE_CHARS", 1 << 16)
    path = write(tmp_path / "s.csv", H + "q,p,1\nq," + "x" * (1 << 17) + ",2\n")
    with pytest.raises(DataFormatError, match=r"s\.csv:3: a record longer than"):
        list(iter_pairs(path))
    # an unbalanced quote would otherwise swallow the rest of the file into one field
    path = write(tmp_path / "u.csv", H + 'q,"p,1\n' + "q,p,1\n" * 20_000)
    with pytest.raises(DataFormatError, match=r"u\.csv:2: a record longer than .*unbalanced quote"):
        list(iter_pairs(path))
    path = write(tmp_path / "c.json", '{"a": {},\n"b": {"title": "' + "x" * (1 << 17) + '"}}')
    with pytest.raises(DataFormatError, match=r"c\.json:2: a single JSON value longer than 64 KiB"):
        list(iter_json_members(path, chunk=4096))
    assert [k for k, _, _ in iter_json_members(path)] == ["a", "b"]  # it fitted in one read: no harm
    path = write(tmp_path / "c.jsonl", '{"id": "a"}\n{"id": "' + "x" * (1 << 17) + '"}\n')
    with pytest.raises(DataFormatError, match=r"c\.jsonl:2: a line longer than"):
        list(iter_corpus(path))


def test_big_json_value_is_decoded_in_linear_time(tmp_path):
    # each failed decode used to rescan the value from its start after every 1 KiB chunk
    path = write(tmp_path / "c.json", '{"a": {"title": "' + "x" * (4 << 20) + '"}}')
    import time

    t0 = time.perf_counter()
    (pid, doc, line), = iter_json_members(path, chunk=1024)
    assert len(doc["title"]) == 4 << 20 and time.perf_counter() - t0 < 5


def test_deeply_nested_json(tmp_path):
    path = write(tmp_path / "c.json", '{"a": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(DataFormatError, match=r"c\.json:1: .*nested too deeply"):
        list(iter_corpus(path))
    path = write(tmp_path / "gt.json", '{"q": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(DataFormatError, match=r"gt\.json: .*nested too deeply"):
        read_ground_truth(path)


def test_json_lines_in_a_json_file_get_a_hint(tmp_path):
    path = write(tmp_path / "corpus_1.json", '{"id": "a"}\n{"id": "b"}\n')
    with pytest.raises(DataFormatError, match=r"corpus_1\.json:1: expected a product object, got str .*\.jsonl"):
        list(iter_corpus(path))
    with pytest.raises(DataFormatError, match=r"corpus_1\.json:2: unexpected data after .*\.jsonl"):
        list(iter_json_members(path))


@pytest.mark.parametrize("text,match", [
    ('[{"product_id": 1.0}]', "expected a string or integer product id, got 1.0"),
    ('[{"product_id": true}]', "expected a string or integer product id, got True"),
    ('{"": {}}', "empty product id"),
    ('{"  ": {}}', "empty product id"),
])
def test_bad_product_ids(tmp_path, text, match):
    with pytest.raises(DataFormatError, match=r"c\.json:1: " + match):
        list(iter_corpus(write(tmp_path / "c.json", text)))
    assert [k for k, _ in iter_corpus(write(tmp_path / "ok.json", '[{"product_id": 12}]'))] == ["12"]


@pytest.mark.parametrize("text,match", [
    ('{"q": {"a": Infinity}}', "expected a finite relevance"),
    ('{"q": {"a": 1}, "q": {"b": 2}}', "duplicate key 'q'"),
    ('{"q": {"a": 1, "a": 2}}', "duplicate key 'a'"),
    ('{"q": {"a": 1}, "q_{!@#~}_": {"b": 2}}', "query 'q' appears twice"),
    ('{"q": [["a", 1], ["a", 2]]}', "product 'a' appears twice"),
    ('[{"query": "q", "product_id": "a"}, {"query": "q", "product_id": "a"}]', "product 'a' appears twice"),
])
def test_ground_truth_duplicates_and_infinities(tmp_path, text, match):
    with pytest.raises(DataFormatError, match=r"gt\.json: .*" + match):
        read_ground_truth(write(tmp_path / "gt.json", text))


def test_ground_truth_fractional_relevances_round_half_up_with_a_warning(tmp_path, caplog):
    got = read_ground_truth(write(tmp_path / "gt.json", '{"q": {"a": 0.5, "b": 2.5, "c": 3, "d": 0.2}}'))
    assert got == {"q": {"a": 1, "b": 3, "c": 3, "d": 0}}
    assert "gt.json: 3 non-integer relevances rounded" in caplog.text


def test_queries_object_with_mixed_values(tmp_path):
    with pytest.raises(DataFormatError, match=r"q\.json: .*mixes string and non-string values"):
        read_queries(write(tmp_path / "q.json", '{"1": "a", "2": 5}'))


@pytest.mark.parametrize("kind", ["dir", "loop", "broken", "fifo"])
def test_odd_paths_say_what_they_are(tmp_path, kind):
    p = tmp_path / "query_0_product_id_0.csv"
    if kind == "dir":
        p.mkdir()
        why = "a directory"
    elif kind == "loop":
        os.symlink(p, p)
        why = "a symlink loop"
    elif kind == "broken":
        os.symlink(tmp_path / "gone.csv", p)
        why = "a broken symlink"
    else:
        os.mkfifo(p)
        why = "not a regular file"
    for fn in (iter_pairs, iter_corpus, iter_json_members, iter_json_lines):
        with pytest.raises(FileNotFoundError, match=r"query_0_product_id_0\.csv .*" + why):
            list(fn(str(p)))
    for fn in (read_ground_truth, read_queries):
        with pytest.raises(FileNotFoundError, match=why):
            fn(str(p))


def test_empty_and_header_only_files(tmp_path):
    with pytest.raises(DataFormatError, match=r"e\.csv\.gz:1: empty file"):
        list(iter_pairs(write(tmp_path / "e.csv.gz", gz(""))))
    with pytest.raises(DataFormatError, match=r"z\.csv\.gz: not a gzip file|z\.csv\.gz:1: empty file"):
        list(iter_pairs(write(tmp_path / "z.csv.gz", b"")))
    stats = ReadStats()
    assert list(iter_pairs(write(tmp_path / "h.csv", BOM + H), stats=stats)) == [] and stats.rows == 0
    with pytest.raises(DataFormatError, match=r"e\.json:1: invalid JSON"):
        read_ground_truth(write(tmp_path / "e.json", BOM))


def test_header_repeated_mid_file_is_refused(tmp_path):
    # two CSV files concatenated: the second header would otherwise be a row ("query", "product_id")
    path = write(tmp_path / "s.csv", "query,product_id\nq,p\n" + BOM + "query,product_id\nq2,p2\n")
    with pytest.raises(DataFormatError, match=r"s\.csv:3: the header row appears again"):
        list(iter_pairs(path))


def test_header_spaces_warn_and_empty_names_get_a_hint(tmp_path, caplog):
    recs = list(iter_pairs(write(tmp_path / "s.csv", "query, product_id\nq, p\n")))
    assert recs[0].product_id == " p"  # kept as written: the ground truth may have been built from it
    assert "header names have surrounding spaces" in caplog.text
    with pytest.raises(DataFormatError, match=r"duplicate column names \[''\] \(empty names: trailing commas"):
        list(iter_pairs(write(tmp_path / "t.csv", "query,product_id,,\nq,p,,\n")))


def test_dataset_paths_name_what_is_in_the_way(tmp_path):
    (tmp_path / "query_0_product_id_0.csv").mkdir()
    with pytest.raises(FileNotFoundError, match=r"a directory, not a file: query_0_product_id_0\.csv"):
        MarqoGSDataset(str(tmp_path)).csv_path("in_domain")
    write(tmp_path / "query_0_product_id_0.csv.gz", gz("query,product_id\nq,p\n"))
    assert MarqoGSDataset(str(tmp_path)).csv_path("in_domain").endswith(".csv.gz")


def test_unpaired_surrogate_product_id(tmp_path):
    with pytest.raises(DataFormatError, match=r"c\.json:1: product id .* unpaired UTF-16 surrogate"):
        list(iter_corpus(write(tmp_path / "c.json", '{"id-\\ud800": {}}')))
    assert [k for k, _ in iter_corpus(write(tmp_path / "ok.json", '{"id-\\ud83d\\ude00": {}}'))] == ["id-\U0001f600"]


def test_queries_wrapped_in_an_object(tmp_path):
    with pytest.raises(DataFormatError, match=r"q\.json: one key 'queries' holding a list"):
        read_queries(write(tmp_path / "q.json", '{"queries": ["a", "b"]}'))


def test_more_hints(tmp_path):
    with pytest.raises(DataFormatError, match=r"b\.csv:1: the first line is blank"):
        list(iter_pairs(write(tmp_path / "b.csv", "\n" + H)))
    with pytest.raises(DataFormatError, match=r"d\.csv\.gz:1: not valid UTF-8 .*compressed twice"):
        list(iter_pairs(write(tmp_path / "d.csv.gz", gz(gz(H)))))
    with pytest.raises(DataFormatError, match=r"n\.json:1: unexpected data after the top-level JSON value \(NUL bytes"):
        list(iter_corpus(write(tmp_path / "n.json", '{"a": {}}' + "\x00" * 64)))
    with pytest.raises(DataFormatError, match=r"z\.csv\.gz: not a gzip file \(BadGzipFile"):
        list(iter_pairs(write(tmp_path / "z.csv.gz", b"BZh91AY&SY")))


def test_early_syntax_error_is_reported_without_reading_on(tmp_path, monkeypatch):
    monkeypatch.setattr(jsonstream, "MAX_VALUE_CHARS", 1 << 16)
    path = write(tmp_path / "c.json", '{"a": {"t": 1 2},\n' + ",\n".join(f'"k{i}": {{}}' for i in range(50_000)) + "}")
    with pytest.raises(DataFormatError, match=r"c\.json:1: invalid JSON in the value of 'a' .*Expecting ',' delimiter"):
        list(iter_json_members(path, chunk=4096))


def test_garbage_parquet(tmp_path):
    pytest.importorskip("pyarrow")
    with pytest.raises(DataFormatError, match=r"s\.parquet: unreadable parquet file"):
        list(iter_pairs(write(tmp_path / "s.parquet", b"PAR1garbagegarbagePAR1")))
