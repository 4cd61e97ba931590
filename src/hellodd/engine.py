"""The training-loop layer over Lightning Fabric: one code path from one CPU process to N GPUs x M nodes.

* :func:`make_fabric` builds and launches Fabric from :class:`EngineConfig`.  Under ``torchrun`` or
  SLURM the process counts come from the launcher's environment (``LOCAL_WORLD_SIZE``, ``WORLD_SIZE``);
  a config that disagrees is an error rather than N silent single-process jobs.
* Trainable models go through ``fabric.setup`` (DDP when distributed); frozen models (teachers,
  projector, observer) only through :func:`frozen`, never DDP-wrapped.
* :class:`ShardSampler` gives every rank a disjoint, seeded share of each epoch and can start
  mid-epoch, so a resumed run sees exactly the batches an uninterrupted one would.
* :func:`progress` is a tqdm bar on rank 0 only; in a log file, plain lines (:class:`LogProgress`).
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Sampler

from hellodd.config import EngineConfig
from hellodd.errors import UserError
from hellodd.precision import choose


def _launcher_counts() -> tuple[int, int] | None:
    """(devices per node, nodes) declared by torchrun / SLURM, or None when self-launching."""
    env = os.environ
    if "LOCAL_WORLD_SIZE" in env and "WORLD_SIZE" in env and "TORCHELASTIC_RUN_ID" in env:
        local, world = int(env["LOCAL_WORLD_SIZE"]), int(env["WORLD_SIZE"])
        return local, max(1, world // max(local, 1))
    if (
        "SLURM_NTASKS" in env
        and "SLURM_NTASKS_PER_NODE" in env
        and env.get("SLURM_JOB_NAME") not in ("bash", "interactive")
    ):
        per_node = int(env["SLURM_NTASKS_PER_NODE"].split("(")[0])
        return per_node, max(1, int(env["SLURM_NTASKS"]) // per_node)
    return None


def make_fabric(cfg: EngineConfig):
    """Create and launch Fabric; returns it with the seed set (same on every rank)."""
    from lightning_fabric import Fabric  # lazy: a heavy import, needed only to run a stage

    devices, nodes = cfg.devices, cfg.num_nodes
    declared = _launcher_counts()
    if declared is not None:
        if (devices, nodes) not in ((1, 1), declared):
            raise UserError(
                f"--devices {devices} --num-nodes {nodes}: the launcher started {declared[0]} processes per node "
                f"on {declared[1]} node(s); pass matching values or leave both at 1"
            )
        devices, nodes = declared
    accelerator = cfg.accelerator
    if accelerator == "cuda" and not torch.cuda.is_available():
        raise UserError("--accelerator cuda: no CUDA device is visible on this machine")
    if accelerator == "auto":
        accelerator = "cuda" if torch.cuda.is_available() else "cpu"
    distributed = devices * nodes > 1
    fabric = Fabric(
        accelerator=accelerator,
        devices=devices,
        num_nodes=nodes,
        strategy="ddp" if distributed else "auto",
        precision=choose(cfg.precision, accelerator).precision,  # the CLI has resolved auto already
    )
    fabric.launch()
    want = int(os.environ.get("WORLD_SIZE", devices * nodes))
    if fabric.world_size != want:
        raise UserError(f"engine: Fabric runs {fabric.world_size} processes but the launcher declared {want}")
    fabric.seed_everything(cfg.seed, workers=True, verbose=False)
    return fabric


def frozen(fabric, model: nn.Module) -> nn.Module:
    """Eval mode, no gradients, on the device; never wrapped in DDP."""
    model.eval().requires_grad_(False)
    return fabric.to_device(model)


def solo(fabric, precision: str):
    """This rank as a one-process Fabric (same device and precision; no DDP, no collectives) for work that one
    rank does alone: whole student runs with ``evaluate.parallel=runs``.  Its progress bars show on rank 0
    only.  With one process, ``fabric`` itself."""
    if fabric.world_size == 1:
        return fabric
    from lightning_fabric import Fabric  # lazy: a heavy import, needed only to run a stage

    device = fabric.device
    one = Fabric(
        accelerator=device.type,
        devices=[device.index] if device.type == "cuda" else 1,
        strategy="auto",
        precision=precision,
    )
    one.quiet = not fabric.is_global_zero  # read by progress()
    return one


# --------------------------------------------------------------------------------------------------
# pre-emption: SIGTERM (what schedulers send first) or Ctrl-C asks the running loop to checkpoint and stop

_STOP: dict = {"signal": None}


class Preempted(Exception):
    """Raised by a loop that has written its checkpoint after a stop request, or by a pass left at its next
    batch (``step`` None: the loop around it resumes from its last checkpoint); the CLI turns it into one
    line and exits 143 (SIGTERM) or 130 (Ctrl-C)."""

    def __init__(self, what: str, step: int | None = None, total: int | None = None, checkpoint=None):
        self.signal = _STOP["signal"] or "stop"
        if step is None:
            text = (
                f"left the {what} at its next batch; run the same command to resume from the last checkpoint"
            )
        else:
            text = f"{what} stopped at step {step}/{total} after writing {checkpoint}; run the same command to resume from there"
        super().__init__(f"{self.signal} received: {text}")


def _request_stop(signum, frame) -> None:
    if _STOP["signal"] is not None:  # a second signal: stop now, without waiting for the checkpoint
        raise KeyboardInterrupt
    _STOP["signal"] = signal.Signals(signum).name


def install_stop_handlers() -> dict:
    """SIGTERM and SIGINT set the stop flag (a second one interrupts at once); returns the old handlers."""
    _STOP["signal"] = None
    old = {}
    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            old[sig] = signal.signal(sig, _request_stop)
        except ValueError:  # not the main thread: leave signals alone
            pass
    return old


def restore_handlers(old: dict) -> None:
    for sig, handler in old.items():
        signal.signal(sig, handler)
    _STOP["signal"] = None


def test_signal(step: int) -> None:
    """For the kill-and-resume tests: at step ``HELLODD_DIE_AT_STEP`` of the first loop that reaches it, send
    this process ``HELLODD_DIE_SIGNAL`` (KILL by default; TERM to test the checkpoint-and-stop path)."""
    at = os.environ.get("HELLODD_DIE_AT_STEP")
    if at and step == int(at):
        os.kill(os.getpid(), getattr(signal, "SIG" + os.environ.get("HELLODD_DIE_SIGNAL", "KILL")))


def leave_if_stopping(what: str) -> None:
    """Between two batches of a pass that keeps no state of its own (a validation, a labelling pass, stored
    labels being written): after a stop request, leave it (:class:`Preempted`), so that a stop never waits
    for a whole pass.  The test hook ``HELLODD_DIE_IN=<what>`` sends the signal at such a pass's first batch.
    One process only: in a distributed run a rank must not leave a pass that the others go on with (they
    would wait in its collectives), so there the loops' collective polls stop it at their next step."""
    if os.environ.get("HELLODD_DIE_IN") == what:
        os.environ.pop("HELLODD_DIE_IN")  # once: a resumed pass in the same process runs through
        os.kill(os.getpid(), getattr(signal, "SIG" + os.environ.get("HELLODD_DIE_SIGNAL", "TERM")))
    if _STOP["signal"] is not None and not (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    ):
        raise Preempted(what)


def passing(iterable, what: str):
    """``iterable``, left at its next item after a stop request (:func:`leave_if_stopping`)."""
    for item in iterable:
        leave_if_stopping(what)
        yield item


def stop_requested(fabric=None) -> bool:
    """Whether a stop was asked for, on any rank (collective when distributed: call it at the same points on
    every rank).  A loop that sees True writes its checkpoint and raises :class:`Preempted`."""
    flag = _STOP["signal"] is not None
    if fabric is not None and fabric.world_size > 1:
        import torch.distributed as dist  # only with several processes

        t = torch.tensor([float(flag)], device=fabric.device)
        flag = bool(fabric.all_reduce(t, reduce_op=dist.ReduceOp.MAX).item())
        if flag and _STOP["signal"] is None:
            _STOP["signal"] = "SIGTERM (another rank)"
    return flag


class FrozenCompiled(nn.Module):
    """A compiled frozen model whose weights inductor may treat as constants (``freezing``): BatchNorm folded
    into the convolutions and oneDNN weights prepacked once.  Only for models whose weights never change
    again (labellers, weak teachers) and only under ``torch.inference_mode`` / ``no_grad`` (inductor freezes
    inference graphs only).  The setting is scoped to this model's calls, so compiled students, whose weights
    change every step, are never frozen."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.compiled = torch.compile(model)

    def forward(self, *args, **kwargs):
        import torch._inductor.config as inductor_config  # only when compiling

        with inductor_config.patch(freezing=True):  # (re)compiles inside this model's calls see it
            return self.compiled(*args, **kwargs)


def compile_frozen(model: nn.Module) -> nn.Module:
    """``torch.compile`` for a labeller: see :class:`FrozenCompiled` (freezing is what makes compiled labelling
    pay off for the demo's projector; docs/performance.md)."""
    return FrozenCompiled(model)


def step_generator(seed: int, *keys: int) -> torch.Generator:
    """A CPU generator determined by (seed, keys): augmentation that replays after a resume."""
    g = torch.Generator()
    h = seed
    for k in keys:
        h = (h * 1_000_003 + int(k) + 1) % (2**63 - 1)
    return g.manual_seed(h)


class ShardSampler(Sampler[int]):
    """Seeded per-epoch permutation (or identity), split across ranks, optionally starting at a batch.

    Training shards are padded by wrap-around so every rank takes the same number of steps; evaluation
    shards (``pad=False``) are disjoint and unpadded so counts are exact.
    """

    def __init__(self, n: int, rank: int, world: int, seed: int = 0, shuffle: bool = True, pad: bool = True):
        self.n, self.rank, self.world, self.seed, self.shuffle, self.pad = n, rank, world, seed, shuffle, pad
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, start_index: int = 0) -> None:
        # deliberately not named ``set_epoch``: Fabric calls that on every new iterator with its own count
        self.epoch, self.start = epoch, start_index

    def _indices(self) -> list[int]:
        if self.shuffle:
            order = torch.randperm(self.n, generator=step_generator(self.seed, self.epoch)).tolist()
        else:
            order = list(range(self.n))
        if self.pad:
            total = math.ceil(self.n / self.world) * self.world
            order = (order * math.ceil(total / max(self.n, 1)))[:total]
        return order[self.rank :: self.world]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices()[self.start :])

    def __len__(self) -> int:
        return max(0, len(self._indices()) - self.start)


def loader(
    fabric,
    ds: Dataset,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    pad: bool = True,
    workers: int = 0,
    drop_last=False,
) -> DataLoader:
    """A DataLoader over this rank's shard; batches are moved to the device by Fabric."""
    sampler = ShardSampler(len(ds), fabric.global_rank, fabric.world_size, seed, shuffle, pad)
    dl = DataLoader(
        ds,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        persistent_workers=False,
    )
    return fabric.setup_dataloaders(dl, use_distributed_sampler=False)


def block(n: int, rank: int, world: int) -> range:
    """Rank ``rank``'s contiguous share of ``n`` items (classes, images, rows of a batch): the first
    ``n % world`` ranks take one more.  Concatenated in rank order, the blocks are ``range(n)``."""
    size, extra = divmod(n, world)
    start = rank * size + min(rank, extra)
    return range(start, start + size + (rank < extra))


def gather_blocks(fabric, t: torch.Tensor, n: int) -> torch.Tensor:
    """Every rank's rows, concatenated in rank order, on every rank (on ``t``'s device).  ``t`` holds this
    rank's share of ``n`` rows, in the proportions of :func:`block`; shares may differ in length."""
    world = fabric.world_size
    if world == 1:
        return t
    counts = [len(block(n, r, world)) for r in range(world)]
    padded = torch.zeros((max(counts), *t.shape[1:]), dtype=t.dtype, device=fabric.device)
    padded[: len(t)] = t.to(fabric.device)
    everything = fabric.all_gather(padded)  # [world, max(counts), ...]
    return torch.cat([everything[r, :c] for r, c in enumerate(counts)]).to(t.device)


def all_reduce_grads(fabric, params: list[torch.Tensor]) -> None:
    """Sum the gradients of ``params`` over ranks, in one flat all-reduce (a no-op on one process).  Each
    rank's loss is already weighted by its share of the batch, so the sum is the whole batch's gradient."""
    if fabric.world_size == 1:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = fabric.all_reduce(torch.cat([g.reshape(-1) for g in grads]), reduce_op="sum")
    for p, g in zip(params, flat.split([q.numel() for q in params])):
        p.grad = g.view_as(p).to(p.dtype)


def steps_per_epoch(n: int, batch_size: int, world: int, drop_last: bool = False) -> int:
    per_rank = math.ceil(n / world)
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


class LogProgress:
    """What a progress bar becomes when stderr is a file: plain lines, no carriage returns or cursor codes.

    One line when the bar starts, one at most every ``interval`` seconds while it runs, and one when it
    closes, each ``desc: n/total unit (elapsed s[, postfix])``.  Implements the part of tqdm's interface the
    stages use (iteration, ``update``, ``set_postfix``, ``reset``, ``close``)."""

    def __init__(self, iterable=None, total=None, desc="", unit="it", initial=0, interval=60.0, **_):
        self.iterable, self.desc, self.unit, self.n, self.interval = iterable, desc, unit, initial, interval
        self.total = total if total is not None else (len(iterable) if hasattr(iterable, "__len__") else None)
        self.start = self.last = time.monotonic()
        self.postfix, self.closed = "", False
        self._line()

    def _line(self) -> None:
        total = f"/{self.total}" if self.total is not None else ""
        extra = f", {self.postfix}" if self.postfix else ""
        print(
            f"{self.desc}: {self.n}{total} {self.unit} ({time.monotonic() - self.start:.0f} s{extra})",
            file=sys.stderr,
            flush=True,
        )
        self.last = time.monotonic()

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def update(self, k: int = 1) -> None:
        self.n += k
        if time.monotonic() - self.last >= self.interval:
            self._line()

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def reset(self, total=None) -> None:
        self.total, self.n = total, 0

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._line()


def progress(fabric, iterable=None, **kwargs):
    """A tqdm bar on rank 0 only (none with ``HELLODD_NO_PROGRESS=1``).  When stderr is not a terminal (a log
    file): :class:`LogProgress` lines for a stage's bar, nothing for the short nested ones (``leave=False``:
    validation passes, single student runs), so a log reads as a log."""
    from tqdm.auto import tqdm  # only when a bar is shown

    off = (
        not fabric.is_global_zero
        or getattr(fabric, "quiet", False)
        or os.environ.get("HELLODD_NO_PROGRESS") == "1"
    )
    if not sys.stderr.isatty() and not off:
        if kwargs.get("leave", True):
            return LogProgress(iterable, **kwargs)
        off = True
    kwargs.setdefault("mininterval", 0.5)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, disable=off, **kwargs)
