"""A student trained from scratch on a distilled set with one label source: the evaluation's unit.

Per iteration: a batch of views from the seeded stream (crops, flips, CutMix; stored labels replay their
own), the source's targets on exactly those pixels, one AdamW step (:func:`student_step`).  The student is
validated after the last epoch only (no selection on the test set).  A run is resumable: its state is saved
every tenth of the run and on SIGTERM, bound to the key of everything it depends on.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path

import torch

from hellodd import engine
from hellodd.augment import render
from hellodd.config import Config
from hellodd.records import peak_memory_mib
from hellodd.resume import ResumePoint
from hellodd.tasks import task_of

# RDED's per-architecture AdamW learning rates (argument.py); used with evaluate.lr_per_arch=true
RDED_LR = {
    "resnet18": 1e-3,
    "mobilenet_v2": 2.5e-3,
    "efficientnet_b0": 2e-3,
    "vgg11": 5e-4,
    "swin_v2_t": 1e-4,
    "vit_b_16": 1e-4,
}


def lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    if schedule == "half-cosine":
        return 0.5 * (1 + math.cos(math.pi * epoch / (2 * epochs)))
    return 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def student_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Supplement Table 3: AdamW; no decay on biases and norm weights (RDED's ``get_parameters``)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


class PartClock:
    """Seconds per part of a student run (views, labels, the optimiser step, checkpoints, validation), for the
    evaluation's profile.  On a GPU each part ends with a synchronisation, so the parts add up to the step."""

    PARTS = ("views", "labels", "step", "checkpoints", "validation")

    def __init__(self, device: torch.device):
        self.sync = device.type == "cuda"
        self.seconds = dict.fromkeys(self.PARTS, 0.0)
        self.t = time.perf_counter()

    def start(self) -> None:
        self.t = time.perf_counter()

    def lap(self, part: str) -> None:
        if self.sync:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.seconds[part] += now - self.t
        self.t = now


def student_step(
    cfg: Config, fabric, model, opt, source, stream, images, labels, epoch: int, step: int, clock=None
) -> torch.Tensor:
    """One student iteration, as timed per label source: render the batch's views, label them, one optimiser
    step.  Stored labels replay their own copy of the stream's batches; other sources draw from ``stream``.
    With a :class:`PartClock`, the seconds of each part are added to it."""
    task = task_of(cfg.data)
    lap = clock.lap if clock is not None else (lambda part: None)
    batches = source if source.own_views else stream  # stored labels replay their views
    idx, crops, mix = batches.batch_params(epoch, step)
    x = render(images, idx, crops, mix, fabric.device)
    y = task.view_targets(labels, idx, crops, mix, fabric.device)
    lap("views")
    with fabric.autocast():  # engine.precision: labels are generated at the student's precision
        targets = source.targets(x, y, mix, epoch, step)
        lap("labels")
        out = model(x).float()
    loss = task.student_loss(cfg.evaluate, out, targets, source.kind, y)
    opt.zero_grad(set_to_none=True)
    fabric.backward(loss)
    opt.step()
    if fabric.device.type == "cuda":
        torch.cuda.synchronize()
    lap("step")
    return loss


def train_student(
    cfg: Config,
    fabric,
    arch: str,
    source,
    images,
    labels,
    val,
    num_classes: int,
    seed: int,
    stream,
    state_path: Path | None = None,
    key: str = "",
    classes: list[str] | None = None,
) -> dict:
    """One student run (``evaluate.epochs`` over the stream), validated at the end: its result row.

    With ``state_path``, resumable: the student, optimiser and CPU generator are saved every tenth of the
    run and on SIGTERM (:func:`hellodd.engine.stop_requested`), tagged with ``key`` (the digest of everything
    the run depends on); a state with another key is ignored.  A resumed run ends exactly where an
    uninterrupted one does: its views and learning rates are functions of (epoch, step) only."""
    ev = cfg.evaluate
    task = task_of(cfg.data)
    torch.manual_seed(seed)
    model = task.build(arch, num_classes, images.shape[1], images.shape[-1])
    lr = RDED_LR.get(arch, ev.lr) if ev.lr_per_arch else ev.lr
    opt = student_optimizer(model, lr, ev.weight_decay)
    plain = model  # the module itself (same parameters as the compiled one): what a state saves and loads
    start_epoch, start_step, times, step_total, before = 0, 0, [], 0, 0.0
    what = f"evaluation ({source.name} -> {arch}, seed {seed})"
    point = ResumePoint(state_path, key, what, ev.epochs, fabric)
    st = point.load()
    if st is not None:
        plain.load_state_dict(st["model"])
        opt.load_state_dict(st["optimizer"])
        torch.set_rng_state(st["rng"])
        if st.get("cuda_rng") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(st["cuda_rng"])
        start_epoch, times, step_total, before = st["epoch"], st["times"], st["steps"], st["seconds"]
        start_step = st.get("step", 0)  # a stop inside an epoch saves the step it reached
        fabric.print(
            f"evaluate: {source.name} -> {arch}, seed {seed}: resuming at epoch {start_epoch}/{ev.epochs}"
            + (f", step {start_step}" if start_step else "")
        )
    model, opt = fabric.setup(torch.compile(model) if ev.compile else model, opt)
    started = time.perf_counter()
    every = max(1, ev.epochs // 10)
    model.train()
    bar = engine.progress(
        fabric,
        total=ev.epochs,
        initial=start_epoch,
        desc=f"{source.name} -> {arch} (seed {seed})",
        unit="ep",
        leave=False,
    )
    loss = torch.zeros(())
    clock = PartClock(fabric.device)
    for epoch in range(start_epoch, ev.epochs):
        for g in opt.param_groups:
            g["lr"] = lr * lr_factor(ev.schedule, epoch, ev.epochs)
        for step in range(start_step if epoch == start_epoch else 0, stream.steps_per_epoch):
            t0 = time.perf_counter()
            clock.start()
            loss = student_step(cfg, fabric, model, opt, source, stream, images, labels, epoch, step, clock)
            times.append(time.perf_counter() - t0)
            step_total += 1
            point.hook(step_total)
            stop = point.stop_requested()  # SIGTERM / Ctrl-C: checkpoint after this step, then stop
            ended = step + 1 == stream.steps_per_epoch
            # a tenth of the run; at the last epoch, finishing costs less than resuming
            if stop or (ended and (epoch + 1) % every == 0 and epoch + 1 < ev.epochs):
                state = {
                    "model": plain.state_dict(),
                    "optimizer": opt.state_dict(),
                    "rng": torch.get_rng_state(),
                    "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "epoch": epoch + 1 if ended else epoch,
                    "step": 0 if ended else step + 1,
                    "times": times,
                    "steps": step_total,
                    "seconds": before + time.perf_counter() - started,
                }
                clock.start()
                point.save(epoch + ended, state, stop)
                clock.lap("checkpoints")
        bar.update(1)
    bar.close()
    # compiled validation: one eval-mode compile per process, then 1.6x faster per run (docs/performance.md)
    classes = classes or [str(c) for c in range(num_classes)]
    clock.start()
    val_metrics = task.evaluate(fabric, model, val, classes, ev.eval_batch_size)
    clock.lap("validation")
    warm = times[5:] if len(times) > 5 else times
    # the first iterations' time above the median: compiling the student and, on first use, its labeller
    first = sum(times[: min(5, len(times))]) - statistics.median(warm) * min(5, len(times)) if warm else 0.0
    return {
        "source": source.name,
        "student": arch,
        "seed": seed,
        "lr": lr,
        **task.row(val_metrics),  # score, second and their names (the task's metrics)
        "iterations": step_total,
        "seconds_per_iteration": statistics.median(warm) if warm else 0.0,
        "seconds": before + time.perf_counter() - started,  # the run: training, label generation, validation
        "final_loss": float(loss.item()),
        "peak_memory_mib": peak_memory_mib(fabric.device),
        "parts_seconds": {**clock.seconds, "first_iterations_extra": max(first, 0.0)},
    }
