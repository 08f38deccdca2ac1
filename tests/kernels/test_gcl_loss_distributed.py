"""gathered_gcl_loss: the per-rank shares over 2 and 3 real gloo processes sum to
gcl_loss on the global batch, loss and every gradient, on awkward shapes (unequal
slices, an empty rank, extra negatives, groups repeated across ranks, fields in pairs,
every direction and normalisation)."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gcl_kernels import gcl_loss
from gcl_kernels.distributed import gathered_gcl_loss


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _case(seed, sizes, extras, f_l, f_r, groups):
    g = torch.Generator().manual_seed(seed)
    b, e = sum(sizes), sum(extras)
    x = torch.randn(f_l, b, 6, generator=g, dtype=torch.float64)
    y = torch.randn(f_r, b + e, 6, generator=g, dtype=torch.float64)
    w = torch.rand(b, generator=g, dtype=torch.float64) + 0.05
    fw = torch.rand(f_l, f_r, generator=g, dtype=torch.float64) + 0.1
    lg = torch.randint(0, 4, (b,), generator=g) if groups else None  # few ids: repeats across ranks
    rg = torch.randint(0, 5, (b + e,), generator=g) if groups else None
    return x, y, w, fw, lg, rg


CASES = [
    # (sizes per rank, extras per rank, F_L, F_R, groups, direction, normalize)
    ((3, 4), (0, 0), 1, 1, True, "both", "batch"),
    ((5, 2), (2, 1), 2, 2, True, "both", "weights"),
    ((4, 4), (0, 3), 1, 2, False, "lhs_to_rhs", "batch"),
    ((2, 6), (1, 0), 2, 1, True, "rhs_to_lhs", "weights"),
    ((0, 5), (0, 2), 1, 1, True, "both", "batch"),   # a rank with no rows
    ((1, 1), (0, 0), 1, 1, True, "both", "batch"),
]
CASES3 = [((3, 1, 4), (1, 0, 2), 2, 2, True, "both", "weights"), ((2, 0, 3), (0, 0, 0), 1, 1, True, "both", "batch")]


def _worker(rank, world, port, cases, impl, q):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        out = []
        for seed, (sizes, extras, f_l, f_r, groups, direction, normalize) in enumerate(cases):
            x, y, w, fw, lg, rg = _case(seed, sizes, extras, f_l, f_r, groups)
            b0, e0 = sum(sizes[:rank]), sum(extras[:rank])
            b, e = sizes[rank], extras[rank]
            btot = sum(sizes)
            xl = x[:, b0:b0 + b].clone().requires_grad_(True)
            yl = torch.cat([y[:, b0:b0 + b], y[:, btot + e0:btot + e0 + e]], 1).clone().requires_grad_(True)
            s = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
            loc = lambda t, n0, n: None if t is None else t[n0:n0 + n]
            rgl = None if rg is None else torch.cat([rg[b0:b0 + b], rg[btot + e0:btot + e0 + e]])
            share = gathered_gcl_loss(xl, yl, s, weights=w[b0:b0 + b], field_weights=fw,
                                      lhs_groups=loc(lg, b0, b), rhs_groups=rgl, direction=direction,
                                      normalize=normalize, impl=impl)
            share.backward()
            gs = 0.0 if s.grad is None else float(s.grad)  # a rank with no rows never uses the scale
            # numpy, not tensors: a tensor put on a torch.multiprocessing queue is sent as a shared
            # file descriptor, which the parent cannot open once this process has exited
            out.append((float(share.detach()), xl.grad.numpy().copy(), yl.grad.numpy().copy(), gs))
        q.put((rank, out))
    finally:
        dist.destroy_process_group()


def _run(world, cases, impl):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, world, port, cases, impl, q)) for r in range(world)]
    for p in procs:
        p.start()
    results = dict(q.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def _check(world, cases, impl):
    results = _run(world, cases, impl)
    for seed, (sizes, extras, f_l, f_r, groups, direction, normalize) in enumerate(cases):
        x, y, w, fw, lg, rg = _case(seed, sizes, extras, f_l, f_r, groups)
        x = x.clone().requires_grad_(True)
        y = y.clone().requires_grad_(True)
        s = torch.tensor(2.5, dtype=torch.float64, requires_grad=True)
        want = gcl_loss(x, y, s, weights=w, field_weights=fw, lhs_groups=lg, rhs_groups=rg,
                        direction=direction, normalize=normalize, impl="reference")
        want.backward()
        got = sum(results[r][seed][0] for r in range(world))
        assert got == pytest.approx(float(want.detach()), rel=1e-10, abs=1e-12), (seed, got, float(want))
        assert sum(results[r][seed][3] for r in range(world)) == pytest.approx(float(s.grad), rel=1e-9, abs=1e-12)
        btot = sum(sizes)
        for r in range(world):
            b0, e0, b, e = sum(sizes[:r]), sum(extras[:r]), sizes[r], extras[r]
            torch.testing.assert_close(torch.from_numpy(results[r][seed][1]), x.grad[:, b0:b0 + b],
                                       rtol=1e-9, atol=1e-12)
            want_y = torch.cat([y.grad[:, b0:b0 + b], y.grad[:, btot + e0:btot + e0 + e]], 1)
            torch.testing.assert_close(torch.from_numpy(results[r][seed][2]), want_y, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("impl", ["reference", "chunked"])
def test_two_ranks_sum_to_the_global_loss_and_gradients(impl):
    _check(2, CASES, impl)


def test_three_ranks_sum_to_the_global_loss_and_gradients():
    _check(3, CASES3, "chunked")


def test_needs_an_initialised_process_group():
    with pytest.raises(RuntimeError, match="torch.distributed is not initialised"):
        gathered_gcl_loss(torch.randn(2, 3), torch.randn(2, 3), 1.0)
