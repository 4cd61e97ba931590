"""The view adaptation (hellodd's step, not the paper's): the transfer continued on a distilled set's
student views, so the adapters that label a set have seen what students will ask about."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from hellodd import engine
from hellodd.augment import render, student_stream
from hellodd.config import Config
from hellodd.errors import UserError
from hellodd.io import load_tensors, sha256, tensor_sha256
from hellodd.labels import MeanLogits
from hellodd.layout import ADAPT_STATE_FILE, ADAPTER_FILE, cache_dir
from hellodd.models import load_classifier
from hellodd.projector.adapters import adapter_tensors, load_projector, save_adapters
from hellodd.projector.model import stored_parameters
from hellodd.projector.transfer import adapter_optimizer, agreement, set_lr, teacher_logits, transfer_loss
from hellodd.resume import ResumePoint
from hellodd.tasks import task_of

# streams of the view adaptation: never one of the evaluation's (seed * 1000 + student seed < 10**6)
ADAPT_STREAM_SEED, HELD_OUT_STREAM_SEED, SELECT_STREAM_SEED = 10**6, 2 * 10**6, 4 * 10**6
# a check whose selection MSE exceeds the best so far by more than this fraction is a regression; smaller
# rises are the noise of 300 selection views (up to 2.4% measured on the demo), never a reason to go back
REGRESSION_TOLERANCE = 0.1


def view_agreement(fabric, proj: nn.Module, teachers: nn.Module, images, stream, batches: int) -> dict:
    """Projector vs weak-teacher mean on ``batches`` batches of a student stream: top-1 agreement, KL, MSE.
    Both run under the engine's autocast, as when they label a student's batch."""

    zs, ps = [], []
    with torch.inference_mode(), fabric.autocast():
        for b in engine.passing(range(batches), "agreement probe"):
            idx, crops, mix = stream.batch_params(*divmod(b, stream.steps_per_epoch))
            x = render(images, idx, crops, mix, fabric.device)
            zs.append(teacher_logits(teachers, x).float().cpu())
            ps.append(proj(x).float().cpu())
    return agreement(torch.cat(zs), torch.cat(ps))


def adapt_to_views(
    cfg: Config, fabric, adapter_file: Path, teachers: list[dict], images, labels, val, out: Path, bar=None
) -> dict:
    """Continue the knowledge transfer on the views students will ask about (hellodd's step, not the paper's).

    The transfer of :func:`train_projector` runs on real training images.  Students query the projector on
    random-resized crops, flips and CutMix of the *distilled* images (:class:`~hellodd.augment.Stream`), where
    the demo's projector copies its teachers far more loosely (docs/method.md).  This step trains the same
    adapters (same loss, teachers and optimiser settings) for ``distill.adapt_steps`` batches of such views
    (learning rates x ``distill.adapt_lr_scale``), drawn from a stream of the evaluation's augmentation
    (``evaluate.crop_min_scale``, ``evaluate.cutmix_alpha``) with its own seed, so never the students' exact
    batches; ``distill.adapt_batch`` views per step (0: ``evaluate.batch_size``, the students' batch).  The CE target is the CutMix-mixed one-hot label.

    It cannot silently collapse: ``distill.adapt_checks`` times over the budget (and before the first step)
    the logit MSE to the teachers is measured on a *selection* stream of about 300 views of its own, and the
    adapters with the lowest MSE so far are remembered.  A check more than :data:`REGRESSION_TOLERANCE` above
    that best is a regression: the best adapters are put back and the learning rates halved.  The last check
    is at the last step, so the result is within the tolerance of the best adapters seen (stage 3's
    included): on the selection stream it never ends clearly worse than where it started.  A run without a
    regression trains exactly as it would without checks.  Agreement is reported before and after on a
    third, held-out stream (about 1000 views); ``regressed`` says whether it ended below where it started.

    The result is written beside the distilled set as ``adapters.safetensors``, a file of the same size as
    the transfer's.  Resumable (state every 50 steps and at every check).  Across ranks, every rank renders
    the whole batch and trains on its block of rows; the gradients, weighted by each block's share, are
    summed (one all-reduce), so every rank takes the one-process step up to the order of that sum.  bf16
    autocast works, fp16 would need a scaler.
    """
    d = cfg.distill
    _, meta = load_tensors(adapter_file)
    pcfg = replace(cfg.projector, **meta["projector"])  # the file's base and ranks, this config's optimiser
    scale = d.adapt_lr_scale
    pcfg = replace(pcfg, lr=pcfg.lr * scale, head_lr=(pcfg.head_lr or pcfg.lr) * scale)
    proj = load_projector(adapter_file, fabric.device, cache_dir(cfg))
    stored = stored_parameters(proj)
    for n, q in proj.named_parameters():
        q.requires_grad_(n in stored)
    teacher_models = MeanLogits([engine.frozen(fabric, load_classifier(t["path"])[0]) for t in teachers])
    if cfg.evaluate.compile:  # they label views exactly as online labellers do in the evaluation
        teacher_models = engine.compile_frozen(teacher_models)
    num_classes, task = len(proj.classes), task_of(cfg)
    if not task.adapts_views:
        raise UserError(
            f"--set distill.adapt_steps={d.adapt_steps}: no view adaptation for {task.name} sets yet"
        )

    ev = cfg.evaluate
    train = student_stream(
        replace(ev, batch_size=d.adapt_batch or ev.batch_size), images, ADAPT_STREAM_SEED + cfg.engine.seed
    )
    select, held = (
        student_stream(ev, images, s + cfg.engine.seed) for s in (SELECT_STREAM_SEED, HELD_OUT_STREAM_SEED)
    )
    probe_batches = max(1, -(-d.adapt_probe_views // held.batch))
    select_batches = max(1, -(-d.adapt_check_views // select.batch))

    def select_mse() -> float:
        proj.eval()
        mse = view_agreement(fabric, proj, teacher_models, images, select, select_batches)["logit_mse"]
        proj.train()
        return mse

    before = view_agreement(fabric, proj.eval(), teacher_models, images, held, probe_batches)
    opt = adapter_optimizer(proj, pcfg)
    total, source, images_sha = d.adapt_steps, sha256(adapter_file), tensor_sha256(images)
    warm, step = max(1, round(0.05 * total)), 0
    checks = (
        sorted({round(total * (i + 1) / d.adapt_checks) for i in range(d.adapt_checks)})
        if d.adapt_checks
        else []
    )
    key = {  # everything the adapted adapters depend on: a state made from anything else is not resumed
        "total": total,
        "adapted_from": source,
        "images": images_sha,
        "optimiser": [pcfg.lr, pcfg.head_lr, pcfg.weight_decay, pcfg.ce_weight],
        "views": [cfg.engine.seed, d.adapt_batch or ev.batch_size, ev.crop_min_scale, ev.cutmix_alpha],
        "checks": [checks, REGRESSION_TOLERANCE],
    }

    def snapshot() -> dict:
        return {k: v.clone() for k, v in adapter_tensors(proj).items()}  # not views of the live parameters

    best = {"step": 0, "mse": None, "adapters": snapshot()}
    history: list[dict] = []
    # a state of other steps, stage-3 adapters or images is never resumed, never reused
    point = ResumePoint(out / ADAPT_STATE_FILE, key, "view adaptation", total, fabric)
    st = point.load()
    if st is not None:
        proj.load_state_dict(st["adapters"], strict=False)
        opt.load_state_dict(st["optimizer"])
        step, best, history = st["step"], st["best"], st["history"]
    if best["mse"] is None and checks:
        best["mse"] = select_mse()
        history.append({"step": 0, "select_mse": best["mse"], "regression": False})
    if bar is not None:
        bar.update(step)
    t0 = time.perf_counter()
    proj.train()
    trainable = [q for q in proj.parameters() if q.requires_grad]
    while step < total:
        set_lr(opt, step, total, warm)
        idx, crops, mix = train.batch_params(*divmod(step, train.steps_per_epoch))
        x = render(images, idx, crops, mix, fabric.device)  # the whole batch (CutMix pairs rows across it)
        y = task.hard_targets(task.view_targets(labels, idx, crops, mix, fabric.device), num_classes, mix)
        rows = engine.block(len(x), fabric.global_rank, fabric.world_size)  # this rank's rows of it
        loss, mse, ce = transfer_loss(
            fabric,
            proj,
            teacher_models,
            x[rows.start : rows.stop],
            y[rows.start : rows.stop],
            pcfg.ce_weight,
            task,
        )
        opt.zero_grad(set_to_none=True)
        (loss * (len(rows) / len(x)) if fabric.world_size > 1 else loss).backward()
        engine.all_reduce_grads(fabric, trainable)  # summed shares: the whole batch's gradient on every rank
        opt.step()
        step += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(mse=f"{mse.item():.3f}", refresh=False)
        if step in checks:  # remember the best adapters; a regression goes back to them and halves the rates
            now = select_mse()
            # a NaN or infinite MSE (adapters blown up) is the worst regression, not "no worse than the best"
            regression = not math.isfinite(now) or now > (1 + REGRESSION_TOLERANCE) * best["mse"]
            if regression:
                proj.load_state_dict(best["adapters"], strict=False)
                for g in opt.param_groups:
                    g["base_lr"] *= 0.5
            elif now < best["mse"]:
                best = {"step": step, "mse": now, "adapters": snapshot()}
            history.append({"step": step, "select_mse": now, "regression": regression})
        stop = point.poll(step)
        if step % 50 == 0 or step in checks or step == total or stop:  # ranks hold the same adapters
            state = {"adapters": adapter_tensors(proj), "optimizer": opt.state_dict(), "step": step}
            point.save(step, {**state, "best": best, "history": history}, stop)
    seconds = time.perf_counter() - t0
    proj.eval()
    after = view_agreement(fabric, proj, teacher_models, images, held, probe_batches)
    probe = task.probe(val, cfg.engine.seed)  # the validation images the transfer compared on
    probe_val = task.evaluate(fabric, proj, probe, proj.classes, 250, desc="val (probe)")
    path = out / ADAPTER_FILE
    extra = {
        "adapted_from": source,
        "adapted_to_images": images_sha,
        "adapt_steps": total,
        # the step whose adapters are written: the last, unless the last check went back to the best
        "kept_step": best["step"] if history and history[-1]["regression"] else total,
        "teachers": meta.get("teachers"),
    }
    if fabric.is_global_zero:
        save_adapters(path, proj, pcfg, extra)
    fabric.barrier()
    return {
        "steps": total,
        "views_per_step": train.batch * fabric.world_size,
        "kept_step": extra["kept_step"],
        "seconds": seconds,
        "held_out_views": probe_batches * held.batch,
        "selection_views": select_batches * select.batch,
        "checks": history,
        "agreement_before": before,
        "agreement_after": after,
        # ended below where it started on held-out views: fewer top-1 agreements or a larger logit MSE
        "regressed": after["top1_agreement"] < before["top1_agreement"]
        or after["logit_mse"] > before["logit_mse"],
        "val_probe_score": probe_val[task.metric],
        "val_probe_score_name": task.metric_name,
        "adapter_file": str(path),
        "adapter_bytes": path.stat().st_size,
    }
