"""Stage 1: the teacher trajectory (supplement Table 1) and its model pool.

One teacher is trained with SGD + momentum and a step LR schedule; at each epoch of
``teacher.pool_epochs`` (fractions allowed: the step is ``round(epoch * steps_per_epoch)``) the weights
are evaluated on the real validation split and saved to the pool.  Early checkpoints are the HeLlO
*weak teachers*; the final model is the RDED *observer* and the online-teacher baseline.

Outputs in ``<out>/teachers/``::

    pool/epoch_<e>.safetensors   weights + metadata (arch spec, epoch, step, val accuracy)
    final.safetensors            the last weights (also the observer)
    pool.json                    the index: every checkpoint with its epoch and val accuracy
    state.pt                     resume state (model, optimizer, step), rewritten at every checkpoint
    config.json, metrics.json, storage.json

Resume: the data order is a seeded permutation per epoch and the augmentation generator is seeded per
step, so restarting from ``state.pt`` (saved at each pool checkpoint and each epoch end) reproduces
the uninterrupted run exactly.  ``HELLODD_DIE_AT_STEP=N`` kills the process at step N (for tests).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict
from pathlib import Path

import torch

from hellodd import engine
from hellodd.augment import to_float
from hellodd.config import Config, scored_by
from hellodd.errors import UserError
from hellodd.io import check_sha256, read_json, sha256, write_json
from hellodd.layout import FINAL_FILE, POOL_INDEX, STATE_FILE, pool_file, pool_index_path, stage_dir
from hellodd.models import count_parameters, save_classifier
from hellodd.records import peak_memory_mib, write_config, write_results
from hellodd.resume import ResumePoint
from hellodd.tasks import task_of


def checkpoint_steps(epochs: list[float], spe: int) -> dict[int, float]:
    """Map training step -> pool epoch (the last one wins when two round to the same step)."""
    return {max(1, round(e * spe)): e for e in sorted(epochs)}


def lr_at(cfg: Config, step: int, spe: int) -> float:
    t = cfg.teacher
    return t.lr * t.lr_gamma ** math.floor((step / spe) / t.lr_step + 1e-9)


def teacher_optimizer(model: torch.nn.Module, t) -> torch.optim.Optimizer:
    """Supplement Table 1: SGD with momentum and weight decay (``TeacherConfig``)."""
    return torch.optim.SGD(model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)


def load_pool(cfg: Config) -> dict:
    """The pool index written by :func:`train_teachers`; one clear error if the stage has not run."""
    path = pool_index_path(cfg)
    if not path.is_file():
        raise UserError(f"{path}: no teacher pool; run 'hellodd teachers' first (same --out)")
    pool = read_json(path)
    for entry in pool["checkpoints"]:
        entry["path"] = str(path.parent / entry["file"])
        if "sha256" in entry:
            check_sha256(entry["path"], entry["sha256"], path)
    pool["final_path"] = str(path.parent / pool["final"])
    if "final_sha256" in pool:
        check_sha256(pool["final_path"], pool["final_sha256"], path)
    return pool


def write_pool_index(out: Path, arch: str, entries: list[dict], **extra) -> None:
    """``pool.json``: every checkpoint with its epoch, accuracy and sha256 (checked by :func:`load_pool`)."""
    entries = [{**e, "sha256": sha256(out / e["file"])} for e in entries]
    index = {"arch": arch, "checkpoints": entries, "final": FINAL_FILE}
    write_json(out / POOL_INDEX, {**index, "final_sha256": sha256(out / FINAL_FILE), **extra})


def train_teachers(cfg: Config, fabric) -> dict:
    t = cfg.teacher
    out = stage_dir(cfg, "teachers")
    task = task_of(cfg.data)
    bundle = task.load(cfg.data, cfg.engine.seed)
    world = fabric.world_size
    spe = engine.steps_per_epoch(len(bundle.train), t.batch_size, world)
    total = max(1, round(t.epochs * spe))
    ckpt_steps = checkpoint_steps(t.pool_epochs, spe)
    ckpt_steps.setdefault(total, t.epochs)

    model = task.build(t.arch, bundle.num_classes, bundle.channels, bundle.image_size)
    opt = teacher_optimizer(model, t)
    step, pool, history = 0, [], []
    key = {  # what the trajectory depends on: a state made from anything else is not resumed
        "spec": model.spec,
        "total": total,
        "teacher": asdict(t),
        "seed": cfg.engine.seed,
        "data": [cfg.data.name, str(bundle.source), len(bundle.train), cfg.data.image_size],
        "world": world,
    }
    # never silently overwrite a trajectory made from something else
    hint = f"use another --out, or delete {out} to restart"
    point = ResumePoint(out / STATE_FILE, key, "teachers", total, fabric, refuse=True, restart_hint=hint)
    state = point.load()
    if state is not None:
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step, pool, history = state["step"], state["pool"], state["history"]
        fabric.print(f"teachers: resuming at step {step}/{total}")
    if fabric.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, cfg, "teachers")
    model, opt = fabric.setup(model, opt)
    dl = engine.loader(fabric, bundle.train, t.batch_size, shuffle=True, seed=cfg.engine.seed)

    bar = engine.progress(fabric, total=total, initial=step, desc=f"teachers ({t.arch})", unit="step")
    t0, seen = time.perf_counter(), 0
    model.train()
    while step < total:
        epoch, start = divmod(step, spe)
        dl.sampler.set_position(epoch, start * t.batch_size)
        for x, y in dl:
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, step, spe)
            x, y = task.augment(
                to_float(x), y, t.augment, engine.step_generator(cfg.engine.seed, step, fabric.global_rank)
            )
            with fabric.autocast():
                loss = task.loss(model(x), y)
            opt.zero_grad(set_to_none=True)
            fabric.backward(loss)
            opt.step()
            step += 1
            seen += len(y) * world
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{lr_at(cfg, step - 1, spe):.2g}", refresh=False)
            at_epoch_end = step % spe == 0
            stop = point.poll(step)  # SIGTERM / Ctrl-C: checkpoint this step, then stop
            if step in ckpt_steps or at_epoch_end or step == total or stop:
                if step in ckpt_steps:
                    e = ckpt_steps[step]
                    val = task.evaluate(fabric, model, bundle.val, bundle.classes, t.eval_batch_size)
                    entry = {
                        "epoch": e,
                        "step": step,
                        "file": pool_file(e),
                        **{k: val[k] for k in task.scores},
                    }
                    pool = [p for p in pool if p["step"] != step] + [entry]
                    if fabric.is_global_zero:
                        save_classifier(out / entry["file"], model, epoch=e, step=step, val=val)
                        score = f"{task.metric_name} {val[task.metric]:.2f}%"
                        fabric.print(f"teachers: epoch {e:g} (step {step}) val {score}")
                history.append({"step": step, "loss": float(loss.item())})
                module = getattr(model, "module", model)
                state = {"model": module.state_dict(), "optimizer": opt.state_dict(), "step": step}
                point.save(step, {**state, "pool": pool, "history": history}, stop)
            if step >= total or at_epoch_end:
                break
    bar.close()
    elapsed = time.perf_counter() - t0

    final = pool[-1] if pool and pool[-1]["step"] == total else None
    # DDP keeps replicas identical: gather a weight checksum from every rank so the run can show it
    checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().reshape(1)
    rank_checksums = fabric.all_gather(checksum).reshape(-1).tolist()
    metrics = {
        "task": task.name,
        "metric": task.metric,
        "metric_name": task.metric_name,
        "arch": t.arch,
        "params": count_parameters(model),
        "dataset": {
            "name": cfg.data.name,
            "source": bundle.source,
            "train": len(bundle.train),
            "val": len(bundle.val),
            "classes": bundle.num_classes,
        },
        "steps": total,
        "steps_per_epoch": spe,
        "world_size": world,
        "seconds": elapsed,
        "images_per_second": seen / elapsed if elapsed > 0 and seen else None,
        "peak_memory_mib": peak_memory_mib(fabric.device),
        "pool": sorted(pool, key=lambda p: p["step"]),
        f"final_val_{task.metric}": final[task.metric] if final else None,
        "rank_weight_checksums": rank_checksums,
        "loss_history": history,
    }
    if fabric.is_global_zero:
        save_classifier(out / FINAL_FILE, model, epoch=t.epochs, step=total, val=final)
        files = [out / p["file"] for p in metrics["pool"]] + [out / FINAL_FILE]
        storage = {
            "what": "teacher checkpoints (fp32 safetensors); one of them is what an online-teacher label source stores",
            "files": {str(f.relative_to(out)): f.stat().st_size for f in files},
            "teacher_bytes": (out / FINAL_FILE).stat().st_size,
            "teacher_params": metrics["params"],
        }
        write_pool_index(
            out,
            t.arch,
            [{k: p[k] for k in ("epoch", "step", "file", *task.scores[:2])} for p in metrics["pool"]],
        )
        write_results(out, metrics, storage)
    fabric.barrier()
    return metrics


def describe_pool(pool: dict) -> str:
    rows = [
        f"  epoch {p['epoch']:>7g}  val {scored_by(p).metric_name} {scored_by(p).read(p):6.2f}%  "
        f"{Path(p['file']).name}"
        for p in pool["checkpoints"]
    ]
    return "\n".join(rows)
