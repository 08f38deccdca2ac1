"""Embeddings with the structure of real model outputs, for tests and benchmarks.

Real embeddings have a low intrinsic dimension: a few dozen directions carry most of the
variance, and the fields of one document (its title and its image) are correlated because
they describe the same product. I.i.d. Gaussian vectors have neither property, and no ANN
index (nor any model) deals in them. Here every document has a latent ``z ~ N(0, I_L)``;
field f is ``z @ P_f + noise`` with a fixed random projection ``P_f`` ([L, D_f], entries of
variance 1/L, so each coordinate has signal variance 1) and i.i.d. noise of standard
deviation ``noise`` per coordinate (noise norm / signal norm ~= ``noise``), then
L2-normalised. Queries come from the same model with other latents.
"""

from __future__ import annotations

from typing import Dict, Mapping

import numpy as np


def latent_embeddings(
    n: int,
    fields: Mapping[str, int],
    latent_dim: int = 24,
    noise: float = 0.3,
    seed: int = 0,
    projection_seed: int = 1234,
    chunk: int = 65536,
) -> Dict[str, np.ndarray]:
    """``{field: [n, D_f]}`` float32 unit rows sharing a ``latent_dim``-dimensional latent.

    Args:
        n: number of documents (or queries).
        fields: ``{field: dim}``.
        latent_dim: intrinsic dimension L.
        noise: per-coordinate noise std relative to the signal's (0.3: noise norm ~ 30% of signal).
        seed: draws the latents and the noise (use different seeds for documents and queries).
        projection_seed: draws the projections; keep it equal for documents and their queries.
        chunk: rows generated at a time (bounded memory for 1M rows).

    Example:
        >>> e = latent_embeddings(5, {"title": 8, "image": 8})
        >>> e["title"].shape, bool(np.allclose(np.linalg.norm(e["image"], axis=1), 1, atol=1e-5))
        ((5, 8), True)
    """
    if n < 0 or latent_dim < 1 or noise < 0:
        raise ValueError(f"expected n >= 0, latent_dim >= 1, noise >= 0; got {n}, {latent_dim}, {noise}")
    prng = np.random.default_rng(projection_seed)
    proj = {f: prng.standard_normal((latent_dim, d)).astype(np.float32) / np.sqrt(latent_dim)
            for f, d in fields.items()}
    rng = np.random.default_rng(seed)
    out = {f: np.empty((n, d), dtype=np.float32) for f, d in fields.items()}
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        z = rng.standard_normal((e - s, latent_dim)).astype(np.float32)
        for f, d in fields.items():
            x = z @ proj[f] + noise * rng.standard_normal((e - s, d)).astype(np.float32)
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            out[f][s:e] = x
    return out
