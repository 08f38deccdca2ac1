"""gcl_kernels: the Generalized Contrastive Learning loss (reference, chunked PyTorch, fused Triton)."""
from .functional import gcl_loss, triton_available

__all__ = ["gcl_loss", "triton_available"]
__version__ = "0.1.0"
