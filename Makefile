# Two commands on a fresh machine: `make demo` and `make test`.
# Each creates .venv if it is missing and installs the package with its dev extras.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.gcl-installed

.PHONY: install test demo bench clean

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

demo: $(STAMP)
	$(PY) -m gcl_train.demo

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache demo_out
