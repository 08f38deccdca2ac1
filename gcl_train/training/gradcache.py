"""Gradient cache: a batch larger than activation memory allows, with every other pair of
the whole batch still a negative (GradCache, Gao et al. 2021; sentence-transformers'
`CachedMultipleNegativesRankingLoss`).

One optimiser step with micro-batches of M rows:

1. encode the batch M rows at a time without a graph (activations of M rows at a time),
   keeping only the embeddings, and the RNG state each micro-batch started from;
2. compute the loss on all cached embeddings (as leaves) and back-propagate it: this
   gives d loss / d embedding for every row, and the logit scale's gradient;
3. encode each micro-batch again, from its saved RNG state (so dropout and any other
   randomness draw exactly what they drew in pass 1), with a graph, one tower call
   (queries, titles, images) at a time, and back-propagate its slice of the embedding
   gradients, sum(e_mb * g_mb).backward(), before the next call: the activations held
   are those of one field of M rows.

The gradients equal those of the loss over the whole batch computed through the
micro-batched forward of pass 1; the cost is one extra forward pass. Plain gradient
accumulation is not offered: it would shrink the pool of negatives to M.
"""
from __future__ import annotations

import dataclasses
from contextlib import nullcontext
from typing import Any, Dict, List, Optional, Tuple

import torch

from .data import Batch
from .loss import batch_loss, documents, encode_batch, encode_parts


def capture_rng(device: torch.device) -> Dict[str, Any]:
    """The RNG states a forward pass on `device` may draw from."""
    st: Dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        st["cuda"] = torch.cuda.get_rng_state(device)
    return st


def restore_rng(st: Dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(st["cpu"])
    if "cuda" in st:
        torch.cuda.set_rng_state(st["cuda"], device)


def trim_padding(batch: Batch) -> Batch:
    """Drop the padding columns no row of `batch` uses, in tokenizer outputs that carry an
    attention mask (Hugging Face; right padding). A tokenizer pads a batch to its longest
    text, so a micro-batch cut from a large batch carries the padding of the longest text
    of the whole batch: attention over it costs memory and time quadratic in that length
    and would make the cache's memory grow with the batch. The masked positions never
    count, so the embeddings do not change. open_clip token ids (fixed context length,
    no mask) are left as they are."""
    def trim(tokens):
        if not isinstance(tokens, dict) or "attention_mask" not in tokens:
            return tokens
        mask = tokens["attention_mask"]
        n = int(mask.sum(dim=1).max()) if mask.numel() else 0
        if n >= mask.shape[1] or n == 0:
            return tokens
        return {k: (v[:, :n] if isinstance(v, torch.Tensor) and v.dim() == 2 and v.shape == mask.shape else v)
                for k, v in tokens.items()}

    return dataclasses.replace(batch, query_tokens=trim(batch.query_tokens), title_tokens=trim(batch.title_tokens))


def micro_batches(n: int, size: int) -> List[Tuple[int, int]]:
    """[start, stop) row ranges of at most `size` rows covering n rows."""
    if size < 1:
        raise ValueError(f"micro_batch_size: expected a positive int, got {size!r}")
    return [(s, min(n, s + size)) for s in range(0, n, size)]


def cached_loss_backward(model: torch.nn.Module, batch: Batch, loss_fn, micro_batch_size: int,
                         field_weights, field_mode: str, use_groups: bool = True,
                         autocast=None, device: Optional[torch.device] = None) -> torch.Tensor:
    """Forward and backward of one batch through the gradient cache.

    Args:
        model: the two-tower model (in train mode); its parameter gradients accumulate.
        batch: the (local) batch on `device`.
        loss_fn: from `loss_module` (distributed or not).
        micro_batch_size: rows per encoder pass (M).
        field_weights, field_mode, use_groups: as `compute_loss`.
        autocast: a context-manager factory for the encoder passes (e.g. bf16 autocast).
        device: where the model runs (for the RNG states); default the batch's.

    Returns:
        The loss (detached), as `compute_loss` would have returned it.
    """
    device = device or batch.scores.device
    ctx = autocast or nullcontext
    spans = micro_batches(len(batch), micro_batch_size)
    states, qs, fs, present = [], [], [], []
    with torch.no_grad():
        for s, e in spans:
            states.append(capture_rng(device))
            with ctx():
                q, f, p = encode_batch(model, trim_padding(batch.slice(s, e)), field_weights)
            qs.append(q)
            fs.append(f)
            present.append(p)
    after = capture_rng(device)
    q_all = torch.cat(qs).requires_grad_(True)
    f_all = torch.cat(fs, dim=1).requires_grad_(True)
    loss = batch_loss(loss_fn, q_all, documents(f_all, torch.cat(present), field_weights, field_mode),
                      batch, use_groups)
    loss.backward()  # d loss / d embeddings, and the logit scale's gradient
    g_q, g_f = q_all.grad, f_all.grad
    for (s, e), st in zip(spans, states):
        restore_rng(st, device)
        # one tower call at a time, each back-propagated before the next is encoded: the
        # activations held are those of one field of one micro-batch (backward draws no
        # random numbers, so the parts draw what they drew in pass 1, in the same order)
        parts = encode_parts(model, trim_padding(batch.slice(s, e)), field_weights)
        while True:
            with ctx():
                part = next(parts, None)
            if part is None:
                break
            f, emb = part
            surrogate = (emb.float() * (g_q[s:e] if f is None else g_f[f, s:e])).sum()
            if surrogate.requires_grad:
                surrogate.backward()
    restore_rng(after, device)
    return loss.detach()


__all__ = ["cached_loss_backward", "micro_batches", "trim_padding", "capture_rng", "restore_rng"]
