"""gcl_kernels: the Generalized Contrastive Learning loss (reference, chunked PyTorch, fused Triton).

    from gcl_kernels import gcl_loss, GCLLoss, score_to_weight, fuse_fields, triton_available

Importing the package never needs a GPU; the Triton path is imported lazily on first use.
"""
from .functional import gcl_loss, triton_available
from .modules import GCLLoss
from .weights import fuse_fields, score_to_weight

__all__ = ["gcl_loss", "GCLLoss", "score_to_weight", "fuse_fields", "triton_available"]
__version__ = "0.1.0"
