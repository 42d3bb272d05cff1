"""Multi-process search on ``torch.distributed``: the launcher (``hwnas search --nproc N``) and the worker side.

A worker is any process whose environment names ``WORLD_SIZE`` > 1, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR`` and
``MASTER_PORT`` -- set by :func:`launch` (which re-invokes ``python -m search search ...`` once per rank) or by
``torchrun --nproc-per-node N``. Backend: gloo on CPU, NCCL on CUDA (device ``cuda:LOCAL_RANK``).

What makes N processes compute what one process computes with the same (global) batch size:

* **data** -- every rank iterates the same shuffled global batches (same generator, same seed) and keeps its slice
  of rows ``[n*r/N, n*(r+1)/N)`` (:class:`ShardLoader`); a last batch with fewer rows than ranks is skipped;
* **gradients** -- each rank scales its loss by its share of the batch, then the gradients of every stepped parameter
  (weights, architecture, hypernetwork) are summed over ranks before clipping and stepping, so every rank takes the
  same optimiser step as one process on the whole batch;
* **samples** -- every rank holds the same control and Gumbel generators and draws in the same order, so it draws the
  same control value and noise each step; per-sample noise is drawn for the global batch and sliced
  (:class:`ShardedSampler`);
* **BatchNorm** -- batch statistics are reduced over ranks in float64 (:class:`SyncBatchNorm2d`, autograd through
  the all-reduce), so training outputs, gradients and running statistics match one process. ``--bn local`` keeps
  per-rank statistics instead (cheaper: no collectives per BN layer; running statistics then differ per rank and
  rank 0's are saved; results differ from one process by the usual small-batch BN noise).

Only rank 0 writes the run directory; the others read it (resume) before a barrier and never write.
"""

from __future__ import annotations

import datetime
import gc
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.distributed as dist
from torch import nn

from profiler.errors import UserError

ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
TIMEOUT_ENV = "HWNAS_DIST_TIMEOUT_S"  # collective / rendezvous timeout in seconds (default 600)
LAUNCHED_ENV = "HWNAS_DIST_LAUNCHED"  # set by launch(): workers leave the error line about a lost peer to it
PEER_LOST = 3  # a worker's exit code when a collective failed because another worker went away


class DistError(UserError, RuntimeError):
    """A multi-process setup problem; the message is the one line shown to the user."""


def env_world() -> int:
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise DistError(f"environment WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not an integer") from None


def timeout_s() -> float:
    return float(os.environ.get(TIMEOUT_ENV, "600"))


# ------------------------------------------------------------------------------------------ batch norm


class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks; the gradient of each rank's input is the sum over ranks of the output gradients."""

    @staticmethod
    def forward(ctx, t: torch.Tensor) -> torch.Tensor:
        t = t.clone()
        dist.all_reduce(t)
        return t

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        g = g.contiguous().clone()
        dist.all_reduce(g)
        return g


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the global batch (sum over ranks, float64).

    Same parameters, buffers and state_dict keys as ``nn.BatchNorm2d``; eval mode and one process are unchanged.
    Works on CPU (gloo) and CUDA (NCCL); gradients flow through the reduction (``torch.distributed.nn``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        c = x.shape[1]
        xd = x.double()
        count = xd.new_full((1,), float(x.numel() // c))
        s = _AllReduceSum.apply(torch.cat([xd.sum(dim=(0, 2, 3)), (xd * xd).sum(dim=(0, 2, 3)), count]))
        n = s[-1]
        mean = s[:c] / n
        var = (s[c:2 * c] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats and self.running_mean is not None:
            self._update_running(mean.detach(), var.detach(), float(n.detach()))
        y = (xd - mean.view(1, -1, 1, 1)) * torch.rsqrt(var.view(1, -1, 1, 1) + self.eps)
        y = y.to(x.dtype)
        if self.affine:
            y = y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)
        return y

    @torch.no_grad()
    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, n: float) -> None:
        self.num_batches_tracked.add_(1)
        m = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * (n / max(n - 1.0, 1.0))
        self.running_mean.mul_(1 - m).add_(mean.to(self.running_mean.dtype), alpha=m)
        self.running_var.mul_(1 - m).add_(unbiased.to(self.running_var.dtype), alpha=m)


def sync_batchnorm(model: nn.Module) -> int:
    """Turn every plain ``nn.BatchNorm2d`` of ``model`` into a :class:`SyncBatchNorm2d` in place; returns how many."""
    n = 0
    for m in model.modules():
        if type(m) is nn.BatchNorm2d:
            m.__class__ = SyncBatchNorm2d
            n += 1
    return n


# ------------------------------------------------------------------------------------------ the worker side


@dataclass
class Dist:
    """This process's place in the group, and the hooks the search loop calls (see the module docstring)."""

    rank: int
    world: int
    local_rank: int
    sync_bn: bool = True
    device: str = "cpu"  # where collectives' own tensors live (NCCL reduces CUDA tensors only)
    shards: list[tuple[int, int, int]] = field(default_factory=list)  # (lo, hi, global n) of batches in flight

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def bounds(self, n: int) -> tuple[int, int]:
        return n * self.rank // self.world, n * (self.rank + 1) // self.world

    def prepare(self, model: nn.Module) -> None:
        """Sync BatchNorm (unless ``--bn local``) and a sampler that slices per-sample noise."""
        if self.sync_bn:
            from .fused import FusedMixedOp

            if any(isinstance(m, FusedMixedOp) for m in model.modules()):
                # the fused layer calls F.batch_norm on its own stacked buffers: no global statistics there yet
                raise DistError("--bn sync: the fused supernet (default on FBNet spaces) keeps per-rank BatchNorm "
                                "statistics; add --set supernet=reference for global-batch statistics, or --bn local")
            sync_batchnorm(model)
        sampler = getattr(model, "sampler", None)
        if sampler is not None and getattr(sampler, "per_sample", False):
            model.sampler = ShardedSampler(sampler, self)

    def shard(self, loader: Any, train: bool = True) -> "ShardLoader | None":
        if loader is None:
            return None
        if train and (loader.batch_size or 0) < self.world:
            raise DistError(f"--batch-size {loader.batch_size} is smaller than the {self.world} processes; the batch "
                            f"size is global: use at least {self.world} or fewer processes")
        return ShardLoader(loader, self, train)

    def backward(self, loss: torch.Tensor, opts: Sequence[torch.optim.Optimizer]) -> None:
        """``loss.backward()`` of this rank's share, then the gradients of ``opts``' parameters summed over ranks."""
        lo, hi, n = self.shards.pop()
        (loss * ((hi - lo) / n)).backward()
        params = [p for o in opts for g in o.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return
        flat = torch.cat([p.grad.reshape(-1) for p in params])
        dist.all_reduce(flat)
        i = 0
        for p in params:
            k = p.grad.numel()
            p.grad.copy_(flat[i:i + k].view_as(p.grad))
            i += k

    def reduce_means(self, means: dict[str, float], n: int) -> dict[str, float]:
        """Per-rank means over ``n`` samples -> means over all ranks' samples (keys in sorted order on every rank)."""
        keys = sorted(k for k, v in means.items() if isinstance(v, (int, float)))
        t = torch.tensor([float(means[k]) * n for k in keys] + [float(n)], dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        total = max(float(t[-1]), 1.0)
        return {**means, **{k: float(v) / total for k, v in zip(keys, t[:-1])}, "_n": total}

    def reduce_train(self, tr: dict[str, float]) -> dict[str, float]:
        out = self.reduce_means({k: v for k, v in tr.items() if k not in ("steps", "samples")}, int(tr["samples"]))
        n = int(out.pop("_n"))
        return {k: (n if k == "samples" else out.get(k, v)) for k, v in tr.items()}

    def evaluate(self, model: nn.Module, loader: "ShardLoader", forward: Callable) -> dict[str, float]:
        from .train import evaluate

        local = evaluate(model, loader, forward)
        out = self.reduce_means(local, loader.samples)
        out.pop("_n")
        return out

    def barrier(self) -> None:
        dist.barrier()


class ShardLoader:
    """This rank's rows of each global batch of ``loader``; ``train`` loaders register each batch for backward."""

    def __init__(self, loader: Any, d: Dist, train: bool):
        self.loader, self.d, self.train = loader, d, train
        self.samples = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        self.samples = 0
        for x, y in self.loader:
            n = int(y.shape[0])
            if self.train and n < self.d.world:
                continue  # too few rows for every rank to hold one: skipped, in every rank alike
            lo, hi = self.d.bounds(n)
            if self.train:
                self.d.shards.append((lo, hi, n))
            self.samples += hi - lo
            yield x[lo:hi], y[lo:hi]


class ShardedSampler:
    """A per-sample sampler that draws the global batch's noise and keeps this rank's rows."""

    def __init__(self, inner: Any, d: Dist):
        self.inner, self.d = inner, d

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, logits: torch.Tensor, tau: float, g: torch.Generator | None = None, n: int = 1,
                 soft_rows: torch.Tensor | None = None):
        lo, hi, total = self.d.shards[-1]
        if hi - lo != n:
            raise RuntimeError(f"sharded sampler: batch of {n} rows, expected {hi - lo}")
        return self.inner(logits, tau, g, total, soft_rows=soft_rows)[lo:hi]


_CURRENT: Dist | None = None


def current() -> Dist | None:
    """The process group this process belongs to (after :func:`init_from_env`), or None for one process."""
    return _CURRENT


def init_from_env(torch_device: str, sync_bn: bool = True) -> tuple[Dist | None, str]:
    """Join the group the environment names (``WORLD_SIZE`` > 1); returns it and this rank's torch device."""
    global _CURRENT
    world = env_world()
    if world <= 1:
        return None, torch_device
    missing = [k for k in ENV if k not in os.environ]
    if missing:
        raise DistError(f"WORLD_SIZE={world} but {', '.join(missing)} not set: start with `hwnas search --nproc N` "
                        f"or torchrun --nproc-per-node N")
    rank, local = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    if torch_device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise DistError("--torch-device cuda: no CUDA device is available to this torch build; use cpu")
        if local >= torch.cuda.device_count():
            raise DistError(f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} CUDA device(s): "
                            f"start at most one process per GPU (--nproc / --nproc-per-node)")
        torch_device = f"cuda:{local}"
        torch.cuda.set_device(local)
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, init_method="env://", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=timeout_s()))
    _CURRENT = Dist(rank, world, local, sync_bn, torch_device)
    return _CURRENT, torch_device


def shutdown(finished: bool = False) -> None:
    """Leave the group. ``finished``: every rank got here without error, so wait for all of them first.

    A rank that tears its group down while a peer is still finishing (rank 0 writes the last checkpoint after the
    final collective; the others have nothing left to do) can abort at interpreter exit inside gloo ("terminate
    called without an active exception": 2 of 21 two-rank test runs on 2 vCPUs, and once in CI). The barrier makes
    the ranks destroy together; the collection afterwards drops the group's last C++ objects while Python is alive.
    After a failure there is no barrier: the peer it would wait for may be gone.
    """
    global _CURRENT
    if dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()
        gc.collect()
    _CURRENT = None


def peer_lost(e: BaseException) -> bool:
    """A collective failed (a peer died or timed out) rather than this rank's own code."""
    return isinstance(e, dist.DistError) or (isinstance(e, RuntimeError) and "gloo" in str(e).lower())


# ------------------------------------------------------------------------------------------ the launcher


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def default_threads(nproc: int) -> int:
    return max(1, (os.cpu_count() or 1) // nproc)


@dataclass
class Outcome:
    code: int
    message: str | None  # the one line to print (None: the failing rank 0 printed its own)


def _exit_text(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def _last_line(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f.read().splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln.removeprefix("error: ") for ln in lines if ln.startswith("error: ")]
    return errors[-1] if errors else ""


def launch(args: Sequence[str], nproc: int, out: str, poll_s: float = 0.05) -> Outcome:
    """Run ``python -m search <args>`` as ``nproc`` ranks on 127.0.0.1; the first failure ends all of them.

    Rank 0 keeps this terminal (progress, its own error line); the others' output goes to temporary files, read
    back only to name the cause when one of them fails.
    """
    env = {**os.environ, "WORLD_SIZE": str(nproc), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
           LAUNCHED_ENV: "1"}
    procs: list[subprocess.Popen] = []
    logs: list[str] = []
    with tempfile.TemporaryDirectory(prefix="hwnas-ranks-") as tmp:
        try:
            for r in range(nproc):
                e = {**env, "RANK": str(r), "LOCAL_RANK": str(r)}
                logs.append(os.path.join(tmp, f"rank{r}.log"))
                sink = None if r == 0 else open(logs[-1], "w")
                procs.append(subprocess.Popen([sys.executable, "-m", "search", *args], env=e, stdout=sink,
                                              stderr=subprocess.STDOUT if sink else None))
                if sink:
                    sink.close()
            return _supervise(procs, logs, out, poll_s)
        except KeyboardInterrupt:
            _stop(procs, set())
            return Outcome(130, None)
        finally:
            _stop(procs, set())


def _supervise(procs: list[subprocess.Popen], logs: list[str], out: str, poll_s: float) -> Outcome:
    while True:
        codes = [p.poll() for p in procs]
        failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            break
        if all(c == 0 for c in codes):
            return Outcome(0, None)
        time.sleep(poll_s)
    stopped: set[int] = set()
    _stop(procs, stopped)
    culprits = [r for r in failed if procs[r].returncode != PEER_LOST] or failed
    r = culprits[0]
    code = procs[r].returncode
    if r == 0 and code > 0 and code != PEER_LOST:
        return Outcome(code, None)  # rank 0 printed its own one-line error on this terminal
    why = _last_line(logs[r]) if r else ""
    msg = (f"worker rank {r} of {len(procs)} failed ({_exit_text(code)}{': ' + why if why else ''}); all workers "
           f"stopped; the last finished epoch is checkpointed in {out}: add --resume to continue")
    return Outcome(code if code > 0 else 1, msg)


def _stop(procs: list[subprocess.Popen], stopped: set[int], grace_s: float = 5.0) -> None:
    for r, p in enumerate(procs):
        if p.poll() is None:
            p.terminate()
            stopped.add(r)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
