"""gcl_kernels: the Generalized Contrastive Learning loss (reference, chunked PyTorch, fused Triton).

    from gcl_kernels import gcl_loss, GCLLoss, score_to_weight, fuse_fields, triton_available

Importing the package never needs a GPU; the Triton path is imported lazily on first use.
"""
from ._validation import DIRECTIONS, IMPLS, NORMALIZATIONS
from .functional import gcl_loss, triton_available
from .modules import GCLLoss
from .weights import KINDS as _KINDS
from .weights import fuse_fields, score_to_weight

#: The `score_to_weight` kinds, "constant" (the CE baseline) first.
WEIGHT_KINDS = tuple(_KINDS)

__all__ = ["gcl_loss", "GCLLoss", "score_to_weight", "fuse_fields", "triton_available",
           "DIRECTIONS", "NORMALIZATIONS", "IMPLS", "WEIGHT_KINDS"]
__version__ = "0.1.0"
