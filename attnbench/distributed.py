"""Context-parallel attention over P ranks: ring, all-gather-KV and head-parallel (Ulysses) all-to-all.

Generic variants for spec §13 ("Unified View", which does not say how work is split); shards `[B, H, N/P, D]`:
- ring: P steps passing KV blocks to the next rank; partial outputs merged with `lse_merge`;
- allgather_kv: all_gather K, V (Megatron-style context parallel), local attention with causal offsets;
- ulysses: all-to-all sequence shards → head shards (H/P heads, full sequence), attention, all-to-all back.
Causal runs use zig-zag sharding (rank r holds chunks r and 2P−1−r of 2P) so every rank does equal work;
N not a multiple of 2P (or P) is padded and masked. Collectives are point-to-point exchanges with autograd (backward
sends each gradient back), so every variant has a backward; it keeps every KV block (no recomputing ring backward),
and nothing overlaps communication with compute. `Comm.sent_bytes` counts what a rank sends in forward.
`simulate` runs the algorithms for P ranks in one process (a loop over shards): the `native` backends.
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import time
import traceback
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F

from attnbench import memory
from attnbench.ops import repeat_kv
from attnbench.spec import DTYPES

Pieces = list[tuple[int, int]]  # a shard: global [start, end) ranges of the padded sequence
METHODS = ("ring_attention", "allgather_kv", "ulysses")  # the registered methods' names
ALIASES = {"ring": "ring_attention"}  # accepted by the command line


# -- sharding ------------------------------------------------------------------------------------
def layout(n: int, world: int, zigzag: bool) -> tuple[int, list[Pieces]]:
    """Padded length and each rank's pieces: contiguous N/P, or zig-zag chunks r and 2P−1−r of 2P."""
    parts = 2 * world if zigzag else world
    n_pad = -(-n // parts) * parts
    c = n_pad // parts
    if zigzag:
        return n_pad, [[(r * c, (r + 1) * c), ((parts - 1 - r) * c, (parts - r) * c)] for r in range(world)]
    return n_pad, [[(r * c, (r + 1) * c)] for r in range(world)]


def shard(x: torch.Tensor, pieces: Pieces, n_pad: int) -> torch.Tensor:
    """Rank-local `[B, H, n_local, D]` of a full `[B, H, N, D]` (zero-padded to n_pad)."""
    x = F.pad(x, (0, 0, 0, n_pad - x.shape[-2]))
    return torch.cat([x[..., a:b, :] for a, b in pieces], dim=-2)


def unshard(shards: Sequence[torch.Tensor], pieces: Sequence[Pieces], n: int) -> torch.Tensor:
    """The full `[B, H, N, D]` from every rank's shard (padding dropped)."""
    items = [(a, pick(t, ps, (a, b))) for t, ps in zip(shards, pieces, strict=True) for a, b in ps]
    return torch.cat([t for _, t in sorted(items, key=lambda it: it[0])], dim=-2)[..., :n, :]


def pick(x: torch.Tensor, pieces: Pieces, r: tuple[int, int]) -> torch.Tensor:
    """The rows of local `x` (covering `pieces`, all of one length) that belong to piece `r`."""
    i, c = pieces.index(r), r[1] - r[0]
    return x[..., i * c:(i + 1) * c, :]


# -- attention on blocks -------------------------------------------------------------------------
def lse_merge(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor, lse_b: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two partial softmax-attention results over disjoint key sets: `out [.., N, D]`, `lse [.., N]`.

    Associative and commutative (up to rounding); a side with lse = −inf (no visible key) contributes 0."""
    m = torch.maximum(lse_a, lse_b)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))
    wa, wb = torch.exp(lse_a - m), torch.exp(lse_b - m)
    z = wa + wb
    out = (out_a * wa[..., None] + out_b * wb[..., None]) / z.clamp_min(torch.finfo(z.dtype).tiny)[..., None]
    return out, m + torch.log(z)


def block_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of one block with its log-sum-exp: `(out [B,H,nq,D], lse [B,H,nq])`, fp32/fp64."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    g = q.shape[1] // k.shape[1]
    k, v = repeat_kv(k.to(acc), g), repeat_kv(v.to(acc), g)
    grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if q.device.type == "cpu" and q.dtype == acc and not grad:  # fused CPU kernel (its lse has no gradient)
        bias = None if mask is None else torch.zeros(mask.shape, dtype=acc).masked_fill(~mask, float("-inf"))
        return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False, attn_mask=bias)
    s = (q.to(acc) @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, torch.zeros_like(m))  # rows with no visible key: out 0, lse −inf
    e = torch.exp(s - m)
    z = e.sum(-1, keepdim=True)
    return (e @ v) / z.clamp_min(torch.finfo(acc).tiny), (m + torch.log(z)).squeeze(-1)


def piece_mask(qr: tuple[int, int], kr: tuple[int, int], n: int, causal: bool, device: Any
               ) -> tuple[bool, torch.Tensor | None]:
    """(skip, mask) for query piece `qr` against key piece `kr`: padding keys (≥ n) and the future hidden."""
    (qs, qe), (ks, ke) = qr, kr
    if ks >= n or (causal and ks > qe - 1):
        return True, None
    if ke <= n and not (causal and ke - 1 > qs):
        return False, None
    i, j = torch.arange(qs, qe, device=device)[:, None], torch.arange(ks, ke, device=device)[None, :]
    return False, (j < n) & (j <= i) if causal else (j < n).expand(qe - qs, ke - ks)


def accumulate(state: list[Any], q: torch.Tensor, q_pieces: Pieces, k: torch.Tensor, v: torch.Tensor,
               k_pieces: Pieces, n: int, causal: bool) -> list[Any]:
    """Merge the attention of every local query piece against one KV block into `state` (per piece)."""
    out = list(state)
    for i, qr in enumerate(q_pieces):
        qp = pick(q, q_pieces, qr)
        for kr in k_pieces:
            skip, mask = piece_mask(qr, kr, n, causal, q.device)
            if skip:
                continue
            o, lse = block_attention(qp, pick(k, k_pieces, kr), pick(v, k_pieces, kr), mask)
            out[i] = (o, lse) if out[i] is None else lse_merge(*out[i], o, lse)
    return out


def prefix_attention(q: torch.Tensor, q_pieces: Pieces, k: torch.Tensor, v: torch.Tensor, causal: bool
                     ) -> torch.Tensor:
    """Local query pieces against the full (unpadded) K, V with their global causal offsets, via SDPA."""
    n, outs, gqa = k.shape[-2], [], q.shape[1] != k.shape[1]
    for qs, qe in q_pieces:
        qp = pick(q, q_pieces, (qs, qe))
        if not causal:
            outs.append(F.scaled_dot_product_attention(qp, k, v, enable_gqa=gqa))
            continue
        end = min(qe, n)
        mask = torch.arange(end, device=q.device)[None, :] <= torch.arange(qs, qe, device=q.device)[:, None]
        outs.append(F.scaled_dot_product_attention(qp, k[..., :end, :], v[..., :end, :], attn_mask=mask,
                                                   enable_gqa=gqa))
    return torch.cat(outs, dim=-2)


# -- collectives: point-to-point exchanges, autograd-aware and byte-counting -----------------------
def _swap(ts: Sequence[torch.Tensor], to: Sequence[int | None], frm: Sequence[int | None]) -> tuple[torch.Tensor, ...]:
    """Send ts[i] to rank to[i] and receive out[i] (shaped like ts[i]) from rank frm[i]; None keeps ts[i]."""
    ts = [t.contiguous() for t in ts]
    outs = [t if f is None else torch.empty_like(t) for t, f in zip(ts, frm, strict=True)]
    ops = [dist.P2POp(dist.isend, t, p) for t, p in zip(ts, to, strict=True) if p is not None]
    ops += [dist.P2POp(dist.irecv, o, p) for o, p in zip(outs, frm, strict=True) if p is not None]
    for req in dist.batch_isend_irecv(ops) if ops else []:
        req.wait()
    return tuple(outs)


class _Exchange(torch.autograd.Function):
    """`_swap` as an autograd op; backward sends every gradient back where its tensor came from (an input
    passed several times, as by all_gather, sums its gradients: a reduce-scatter)."""

    @staticmethod
    def forward(ctx: Any, to: list[int | None], frm: list[int | None], *ts: torch.Tensor) -> tuple[torch.Tensor, ...]:
        ctx.to, ctx.frm = to, frm
        return _swap(ts, to, frm)

    @staticmethod
    def backward(ctx: Any, *gs: torch.Tensor) -> tuple[Any, ...]:
        return (None, None, *_swap(gs, ctx.frm, ctx.to))


class Comm:
    """This rank's view of the default process group; `sent_bytes` adds up what it sends (forward)."""

    def __init__(self) -> None:
        self.rank, self.world, self.sent_bytes = dist.get_rank(), dist.get_world_size(), 0

    def _run(self, ts: Sequence[torch.Tensor], to: list[int | None], frm: list[int | None]) -> list[torch.Tensor]:
        self.sent_bytes += sum(t.nbytes for t, p in zip(ts, to, strict=True) if p is not None)
        return list(_Exchange.apply(to, frm, *ts)) if self.world > 1 else list(ts)

    def shift(self, *ts: torch.Tensor) -> list[torch.Tensor]:
        """Ring step: send to rank+1, receive from rank−1."""
        nxt, prv = (self.rank + 1) % self.world, (self.rank - 1) % self.world
        return self._run(ts, [nxt] * len(ts), [prv] * len(ts))

    def all_gather(self, t: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's `t`, rank order (sent point-to-point: gloo's all_gather has no autograd and was slower)."""
        peers = [None if j == self.rank else j for j in range(self.world)]
        return self._run([t] * self.world, peers, peers)

    def all_to_all(self, chunks: list[torch.Tensor]) -> list[torch.Tensor]:
        """chunks[j] goes to rank j; output j came from rank j."""
        peers = [None if j == self.rank else j for j in range(self.world)]
        return self._run(chunks, peers, peers)


# -- the three variants, rank-local ----------------------------------------------------------------
def ulysses_check(heads: int, kv_heads: int, world: int, strict: bool = False) -> str | None:
    if heads % world or kv_heads % world:
        why = f"ulysses splits heads over ranks: heads={heads} and kv_heads={kv_heads} must be divisible by P={world}"
        if strict:
            raise ValueError(why)
        return why
    return None


def ring(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, n: int, causal: bool, comm: Comm) -> torch.Tensor:
    """Ring attention on this rank's shards (layout(n, P, zigzag=causal)); returns the local output shard."""
    _, pieces = layout(n, comm.world, causal)
    state: list[Any] = [None] * len(pieces[comm.rank])
    for step in range(comm.world):
        src = (comm.rank - step) % comm.world
        state = accumulate(state, q, pieces[comm.rank], k, v, pieces[src], n, causal)
        if step < comm.world - 1:
            k, v = comm.shift(k, v)
    return torch.cat([o for o, _ in state], dim=-2).to(q.dtype)


def allgather_kv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, n: int, causal: bool, comm: Comm
                 ) -> torch.Tensor:
    _, pieces = layout(n, comm.world, causal)
    kf, vf = (unshard(comm.all_gather(t), pieces, n) for t in (k, v))
    return prefix_attention(q, pieces[comm.rank], kf, vf, causal)


def ulysses(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, n: int, causal: bool, comm: Comm
            ) -> torch.Tensor:
    ulysses_check(q.shape[1], k.shape[1], comm.world, strict=True)
    n_pad, pieces = layout(n, comm.world, causal)
    qf, kf, vf = (unshard(comm.all_to_all(list(t.chunk(comm.world, dim=1))), pieces, n) for t in (q, k, v))
    o = F.scaled_dot_product_attention(qf, kf, vf, is_causal=causal, enable_gqa=qf.shape[1] != kf.shape[1])
    return torch.cat(comm.all_to_all([shard(o, ps, n_pad) for ps in pieces]), dim=1)


VARIANTS: dict[str, Callable[..., torch.Tensor]] = {"ring_attention": ring, "allgather_kv": allgather_kv,
                                                     "ulysses": ulysses}


def analytic_bytes(method: str, *, batch: int, heads: int, kv_heads: int, n: int, head_dim: int, elem: int,
                   world: int, causal: bool) -> float:
    """Bytes one rank sends in forward: ring/all-gather 2(P−1)/P·N·D·H_kv·B·elem; Ulysses
    (P−1)/P²·N·D·B·(2H + 2H_kv)·elem (q, k, v in, out back). N is the padded length."""
    n_pad, _ = layout(n, world, causal)
    if method == "ulysses":
        return (world - 1) / world**2 * n_pad * head_dim * batch * (2 * heads + 2 * kv_heads) * elem
    return 2 * (world - 1) / world * n_pad * head_dim * kv_heads * batch * elem


# -- single process: P ranks simulated as a loop over shards ---------------------------------------
def simulate(method: str, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, world: int
             ) -> torch.Tensor:
    """The variant's algorithm for `world` ranks in one process; full tensors in and out (autograd works)."""
    n = q.shape[-2]
    n_pad, pieces = layout(n, world, causal)
    qs, ks, vs = ([shard(t, ps, n_pad) for ps in pieces] for t in (q, k, v))
    outs = []
    for r in range(world):
        if method == "ring_attention":
            state: list[Any] = [None] * len(pieces[r])
            for src in ((r - step) % world for step in range(world)):
                state = accumulate(state, qs[r], pieces[r], ks[src], vs[src], pieces[src], n, causal)
            outs.append(torch.cat([o for o, _ in state], dim=-2).to(q.dtype))
        elif method == "allgather_kv":
            outs.append(prefix_attention(qs[r], pieces[r], k, v, causal))
        elif method == "ulysses":
            ulysses_check(q.shape[1], k.shape[1], world, strict=True)
            hq, hk = q.shape[1] // world, k.shape[1] // world
            qh, kh, vh = q[:, r * hq:(r + 1) * hq], k[:, r * hk:(r + 1) * hk], v[:, r * hk:(r + 1) * hk]
            outs.append(F.scaled_dot_product_attention(qh, kh, vh, is_causal=causal, enable_gqa=hq != hk))
        else:
            raise ValueError(f"unknown variant {method!r}; valid: {', '.join(METHODS)}")
    return torch.cat(outs, dim=1) if method == "ulysses" else unshard(outs, pieces, n)


# -- processes: spawn, per-rank benchmark, torchrun entry point ------------------------------------
def _init(rank: int, world: int, port: int | None) -> None:
    if torch.cuda.is_available():
        torch.cuda.set_device(rank % torch.cuda.device_count())
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", rank=rank, world_size=world,
                            init_method=f"tcp://127.0.0.1:{port}" if port else "env://")


def _entry(rank: int, world: int, port: int, queue: Any, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
    try:
        _init(rank, world, port)
        queue.put((rank, True, fn(*args)))
    except BaseException:  # noqa: BLE001 — the parent re-raises with the rank's traceback
        queue.put((rank, False, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(world_size: int, fn: Callable[..., Any], *args: Any, timeout_s: float = 300.0,
          env: dict[str, str] | None = None) -> list[Any]:
    """Run module-level `fn(*args)` on `world_size` fresh processes in one group (gloo on CPU, nccl on CUDA, a
    free local port, `env` set for their start); return the ranks' picklable results in rank order, or raise."""
    import multiprocessing as mp

    with socket.socket() as sock:  # a free local port
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    ctx, saved = mp.get_context("spawn"), dict(os.environ)
    queue = ctx.SimpleQueue()
    procs = [ctx.Process(target=_entry, args=(r, world_size, port, queue, fn, args), daemon=True)
             for r in range(world_size)]
    try:
        os.environ.update(env or {})  # read at process start (glibc's MALLOC_*)
        for p in procs:
            p.start()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    results: dict[int, Any] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(results) < world_size:
            if queue.empty():
                if time.monotonic() > deadline or any(p.exitcode not in (None, 0) for p in procs):
                    raise RuntimeError(f"spawn: ranks timed out or died (exit codes {[p.exitcode for p in procs]})")
                time.sleep(0.02)
                continue
            rank, ok, res = queue.get()
            if not ok:
                raise RuntimeError(f"rank {rank} failed:\n{res}")
            results[rank] = res
    finally:
        for p in procs:
            p.join(timeout=5)
            p.kill() if p.is_alive() else None
    return [results[r] for r in range(world_size)]


def bench_rank(method: str, shape: dict[str, Any], *, mode: str = "fwd", reps: int = 5, warmup: int = 1,
               seed: int = 0, threads: int = 1, measure_memory: bool = True) -> dict[str, Any]:
    """One rank of a benchmark, inside an initialised group. `shape`: batch, heads, kv_heads, n, head_dim, dtype,
    causal. Returns the per-rep times (lock-step, max over ranks), this rank's peak memory (bytes above the
    baseline), the bytes it sends in one forward, and on rank 0 the gathered output (float64 numpy)."""
    torch.set_num_threads(threads)
    comm, device, s = Comm(), ("cuda" if torch.cuda.is_available() else "cpu"), shape
    gen, n, causal = torch.Generator().manual_seed(seed), s["n"], bool(s["causal"])
    full = [torch.randn(s["batch"], h, n, s["head_dim"], generator=gen).to(device, DTYPES[s["dtype"]])
            for h in (s["heads"], s["kv_heads"], s["kv_heads"])]
    n_pad, pieces = layout(n, comm.world, causal)
    q, k, v = (shard(t, pieces[comm.rank], n_pad).requires_grad_(mode != "fwd") for t in full)
    forward = partial(VARIANTS[method], q, k, v, n=n, causal=causal, comm=comm)
    out0 = forward() if mode == "bwd" else None

    def call() -> Any:
        if mode == "fwd":
            with torch.no_grad():
                return forward()
        out = out0 if out0 is not None else forward()
        return torch.autograd.grad(out, [q, k, v], torch.ones_like(out), retain_graph=out0 is not None)

    for _ in range(warmup):
        call()
    times = torch.zeros(reps, dtype=torch.float64, device=device)
    for i in range(reps):
        dist.barrier()
        t0 = time.perf_counter_ns()
        call()
        torch.cuda.synchronize() if device == "cuda" else None
        times[i] = (time.perf_counter_ns() - t0) / 1e6
    dist.all_reduce(times, op=dist.ReduceOp.MAX)  # a step is as slow as its slowest rank
    peak = None
    if measure_memory and (device == "cuda" or not memory.cpu_peak_supported()):
        peak = memory.cuda_peak_above_baseline(call) if device == "cuda" else memory.peak_rss_above_baseline(call)
    comm.sent_bytes = 0
    with torch.no_grad():
        out = forward()
        sent, outs = comm.sent_bytes, comm.all_gather(out)
    full_out = unshard(outs, pieces, n).double().cpu().numpy() if comm.rank == 0 else None
    return {"samples_ms": times.cpu().tolist(), "peak_bytes": peak, "sent_bytes": sent, "out": full_out}


def main(argv: list[str] | None = None) -> None:
    """`python -m attnbench.distributed` (spawns --world-size ranks) or under `torchrun --nproc-per-node P`."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", default=",".join(METHODS))
    for name, default in (("seq-len", 1024), ("batch", 1), ("heads", 4), ("kv-heads", 0), ("head-dim", 64),
                          ("reps", 5), ("world-size", 2)):
        p.add_argument(f"--{name}", type=int, default=default)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--causal", action="store_true")
    p.add_argument("--mode", default="fwd", choices=("fwd", "bwd", "fwd_bwd"))
    a = p.parse_args(argv)
    shape = {"batch": a.batch, "heads": a.heads, "kv_heads": a.kv_heads or a.heads, "n": a.seq_len,
             "head_dim": a.head_dim, "dtype": a.dtype, "causal": a.causal}
    torchrun = "RANK" in os.environ and "WORLD_SIZE" in os.environ
    fn = partial(bench_rank, mode=a.mode, reps=a.reps, measure_memory=False)
    if torchrun:
        _init(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), None)
    for m in (ALIASES.get(x, x) for x in a.methods.split(",")):
        res = fn(m, shape) if torchrun else spawn(a.world_size, fn, m, shape)[0]
        world, rank = (dist.get_world_size(), dist.get_rank()) if torchrun else (a.world_size, 0)
        ana = analytic_bytes(m, batch=a.batch, heads=a.heads, kv_heads=shape["kv_heads"], n=a.seq_len,
                             head_dim=a.head_dim, elem=torch.finfo(getattr(torch, a.dtype)).bits // 8,
                             world=world, causal=a.causal)
        if rank == 0:
            ms = statistics.median(res["samples_ms"])
            print(f"{m:13s} P={world} latency {ms:.3f} ms  sent {res['sent_bytes']} B/rank (analytic {ana:.0f})")
    if torchrun:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()

