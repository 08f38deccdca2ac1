"""Deprecated alias of `gcl_train.evaluation` (the evaluator is a package now).

Kept until every importer has moved: `from gcl_train.evaluation import ...` instead.
"""
from .evaluation import *  # noqa: F401,F403
from .evaluation import __all__  # noqa: F401
from .evaluation.embeddings import _as_tables, _RowWriter  # noqa: F401
from .evaluation.encoding import _batches, _call_encoder  # noqa: F401
from .evaluation.protocols import EncoderProtocol as Encoder  # noqa: F401
from .evaluation.report import _plot_ndcg, _versions  # noqa: F401
from .evaluation.retrieval import _search, _topk_rows  # noqa: F401
