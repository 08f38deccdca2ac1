"""Plain reference GCL loss: materialises every B x B_R similarity matrix.

Short and readable on purpose; it is the oracle the fast paths are tested against.
Works for every float dtype (computes in float64 for float64 inputs, else float32)
and gets all its gradients from autograd.
"""
from __future__ import annotations

import torch

from .._validation import GCLInputs


def group_mask(lhs_groups, rhs_groups, b: int, b_r: int, device) -> torch.Tensor | None:
    """M[i, j] = True where pair (i, j) is not a true negative (docs/method.md section 1).

    M[i, j] = (i != j) and ((j < L and lhs_groups[i] == lhs_groups[j])
                            or rhs_groups[i] == rhs_groups[j])

    with L = len(lhs_groups), B <= L <= B_R (columns from L on have no query).
    """
    if lhs_groups is None and rhs_groups is None:
        return None
    m = torch.zeros(b, b_r, dtype=torch.bool, device=device)
    if lhs_groups is not None:
        m[:, :lhs_groups.shape[0]] |= lhs_groups[:b, None] == lhs_groups[None, :]
    if rhs_groups is not None:
        m |= rhs_groups[:b, None] == rhs_groups[None, :]
    m[torch.arange(b, device=device), torch.arange(b, device=device)] = False
    return m


def reference_gcl_loss(inp: GCLInputs) -> torch.Tensor:
    f_l, f_r, b, b_r, _ = inp.shape
    acc = inp.logit_scale.dtype
    mask = group_mask(inp.lhs_groups, inp.rhs_groups, b, b_r, inp.x.device)
    idx = torch.arange(b, device=inp.x.device)
    total = inp.logit_scale.new_zeros(())
    for l in range(f_l):
        for r in range(f_r):
            s = inp.logit_scale * (inp.x[l].to(acc) @ inp.y[r].to(acc).T)  # [B, B_R]
            if mask is not None:
                s = s.masked_fill(mask, float("-inf"))
            diag = s[idx, idx]
            term = s.new_zeros(())
            if inp.row_weights is not None:
                row = torch.logsumexp(s, dim=1) - diag
                term = term + (inp.row_weights * row).sum()
            if inp.col_weights is not None:
                col = torch.logsumexp(s[:, :b], dim=0) - diag
                term = term + (inp.col_weights * col).sum()
            total = total + inp.field_weights[l, r] * term
    return total
