"""The command-line applications: `gcl-train` (`train.py`), `gcl-eval` (`eval.py`) and
`gcl-qdrant` (`qdrant.py`), on the shared pieces in `common.py`."""
