"""The layout shows the architecture: `gcl_kernels` and `qdrant_plugin` are libraries that
import nothing from the application `gcl_train` (in their source, and at run time), and
the Qdrant plugin does not need torch."""
import ast
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _imports(package):
    for dirpath, _, files in os.walk(os.path.join(ROOT, package)):
        for fn in files:
            if fn.endswith(".py"):
                path = os.path.join(dirpath, fn)
                tree = ast.parse(open(path, encoding="utf-8").read(), path)
                for node in ast.walk(tree):
                    if isinstance(node, ast.Import):
                        for a in node.names:
                            yield path, a.name
                    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                        yield path, node.module


@pytest.mark.parametrize("package", ["gcl_kernels", "qdrant_plugin"])
def test_libraries_import_nothing_from_the_application(package):
    bad = [(os.path.relpath(p, ROOT), m) for p, m in _imports(package) if m.split(".")[0] == "gcl_train"]
    assert bad == []
    # the two libraries do not import each other either
    other = {"gcl_kernels": "qdrant_plugin", "qdrant_plugin": "gcl_kernels"}[package]
    assert [(p, m) for p, m in _imports(package) if m.split(".")[0] == other] == []


def test_importing_the_libraries_loads_no_application_module():
    code = ("import sys, importlib, pkgutil\n"
            "import gcl_kernels, gcl_kernels.distributed, qdrant_plugin\n"
            "for m in pkgutil.walk_packages(qdrant_plugin.__path__, 'qdrant_plugin.'):\n"
            "    importlib.import_module(m.name)\n"
            "print(sorted({n.split('.')[0] for n in sys.modules if n.split('.')[0] in ('gcl_train', 'torch')}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == "['torch']"  # gcl_kernels needs torch; nothing loads gcl_train
    code2 = "import sys, qdrant_plugin, qdrant_plugin.ingest\nprint('torch' in sys.modules, 'gcl_train' in sys.modules)"
    out2 = subprocess.run([sys.executable, "-c", code2], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out2.stdout.strip() == "False False"  # the Qdrant plugin alone needs neither torch nor the app
