"""Stage 3: the LoRA knowledge transfer from weak teachers to the projector, on real training images.

Knowledge transfer (supplement Table 2; docs/method.md)::

    L = mean_{i,c} (g(a(x_i))_c - z(a(x_i))_c)^2  +  ce_weight * CE(g(a(x_i)), y_i)
    z(v) = (1/|T|) sum_{f in T} f(v)

``z`` averages the weak teachers' **raw logits** (no softmax, no temperature): HeLlO's "MSE + CE" with CE
weights 0.1 / 0.025 is G-VBSM's ``mse_gt`` loss on logits, the projector later emits logits that the
student regresses with the same loss, and matching logits keeps the tail information that softmax at
T=1 flattens.  Averaging the teachers per sample has the same optimum as sampling one per step under an
MSE loss (their mean) with less variance.  AdamW, linear warm-up over the first 5% of steps, cosine to 0;
the head's factors may take their own learning rate (``head_lr``; 0 = ``lr``, the paper's single rate).
Measured on the demo (EfficientNet-Lite0, 64 px, ~160 steps): encoder LoRA at lr >= 1e-2 collapses the
frozen-BatchNorm trunk to chance, while the head, a near-linear probe, needs ~10x the encoder's rate to
converge in so few steps.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from hellodd import engine
from hellodd.augment import apply_cutmix, sample_cutmix, to_float
from hellodd.config import Config, ProjectorConfig
from hellodd.data import per_class_subset, subset
from hellodd.errors import UserError
from hellodd.io import sha256
from hellodd.labels import MeanLogits
from hellodd.layout import (
    ADAPTER_FILE,
    RANDOM_BASE_FOLDER,
    STATE_FILE,
    STORAGE_FILE,
    cache_dir,
    projector_path,
)
from hellodd.projector.adapters import adapter_tensors, add_adapters, save_adapters
from hellodd.projector.bases import build_base
from hellodd.records import peak_memory_mib, write_config, write_results
from hellodd.resume import ResumePoint
from hellodd.tasks import load_network, task_of
from hellodd.teachers import load_pool


def agreement(a: torch.Tensor, b: torch.Tensor) -> dict:
    """Top-1 agreement (%), mean KL(softmax(a) || softmax(b)) and mean squared logit difference (what a
    student's MSE loss sees) between two sets of logits (a: reference)."""
    a, b = a.float(), b.float()
    kl = F.kl_div(F.log_softmax(b, -1), F.log_softmax(a, -1), log_target=True, reduction="batchmean")
    return {
        "top1_agreement": 100.0 * float((a.argmax(-1) == b.argmax(-1)).float().mean()),
        "kl": float(kl),
        "logit_mse": float(F.mse_loss(b, a)),
    }


def teacher_logits(teachers: list[nn.Module] | nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The weak teachers' mean raw logits on ``x`` (the transfer target z), without autograd.  ``teachers``:
    the models, or one module that already averages them (:class:`~hellodd.labels.MeanLogits`, compiled)."""
    model = teachers if isinstance(teachers, nn.Module) else MeanLogits(teachers)
    with torch.inference_mode():
        return model(x)


# --------------------------------------------------------------------------------------------------
# the stage


def weak_teachers(pool: dict, cfg: Config, num_classes: int | None = None) -> list[dict]:
    """The weak teachers: the pool epochs ``projector.teacher_epochs`` names (the presets set them per IPC,
    :data:`hellodd.config.IPC_SETTINGS`).  Without either, the paper's rule made concrete: a window of
    ``num_teachers`` consecutive pool checkpoints whose position moves from the start of the trajectory
    (simple data, small IPC) to its end (complex data, large IPC).  Position f = 0.5 * log10(C)/3 + 0.5 *
    log10(IPC)/2, clipped to [0, 1] (C = 1000 classes or IPC = 100 push it to the end).  C: ``num_classes``,
    the loaded data's class count, or without it the data's own (:func:`data_class_count`), never a count
    guessed from the dataset's kind.  The final model is never a weak teacher under the rule."""
    ckpts = sorted(pool["checkpoints"], key=lambda p: p["epoch"])
    p = cfg.projector
    wanted = list(cfg.projector.teacher_epochs)
    if wanted:
        chosen = [c for c in ckpts if any(abs(c["epoch"] - e) < 1e-9 for e in wanted)]
        missing = set(wanted) - {c["epoch"] for c in chosen}
        if missing:
            raise UserError(
                f"--set projector.teacher_epochs: no pool checkpoint at epoch(s) {sorted(missing)} "
                "(teacher.pool_epochs must keep them)"
            )
        return chosen
    candidates = ckpts[:-1] if len(ckpts) > 1 else ckpts
    k = min(p.num_teachers, len(candidates))
    c = data_class_count(cfg) if num_classes is None else num_classes
    f = 0.5 * math.log10(max(c, 1)) / 3 + 0.5 * math.log10(max(cfg.distill.ipc, 1)) / 2
    start = round(min(max(f, 0.0), 1.0) * (len(candidates) - k))
    return candidates[start : start + k]


def data_class_count(cfg: Config) -> int:
    """The configured data's class count, as its task reads it (class names without an image where it can)."""
    return task_of(cfg).class_count(cfg)


@torch.inference_mode()
def _val_logits(fabric, models: list[nn.Module], ds, batch_size: int) -> list[torch.Tensor]:
    dl = engine.loader(fabric, ds, batch_size, shuffle=False, pad=False)
    outs = [[] for _ in models]
    for x, _ in engine.passing(dl, "agreement probe"):
        x = to_float(x)
        for i, m in enumerate(models):
            outs[i].append(m(x).float().cpu())
    return [torch.cat(o) for o in outs]


def transfer_batch(
    task, x: torch.Tensor, y: torch.Tensor, pcfg: ProjectorConfig, num_classes: int, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """One transfer batch: augmented images and CE targets (class indices or CutMix-ed one-hot rows; class
    maps moved with their images for segmentation).

    With probability ``pcfg.cutmix_prob`` the batch is CutMix-ed (alpha 1), as the students' batches will be;
    the teachers then label the mixed images, so the projector learns their answers on such views.
    """
    x, y = task.augment(to_float(x), y, pcfg.augment, g)
    if pcfg.cutmix_prob > 0 and float(torch.rand(1, generator=g)) < pcfg.cutmix_prob:
        mix = sample_cutmix(len(x), x.shape[-1], 1.0, g)
        x = apply_cutmix(x, mix)
        y = task.mix_targets(y, num_classes, mix)
    return x, y


HEADS = ("head.", "skip.")  # the near-linear probes: trained at head_lr


def adapter_optimizer(proj: nn.Module, pcfg: ProjectorConfig) -> torch.optim.Optimizer:
    """AdamW over the LoRA factors: the encoder's at ``lr``, the heads' (and a dense projector's skip head) at
    ``head_lr`` (0 = ``lr``)."""
    groups = [
        {"params": [p for n, p in proj.named_parameters() if p.requires_grad and not n.startswith(HEADS)]},
        {"params": [p for n, p in proj.named_parameters() if p.requires_grad and n.startswith(HEADS)]},
    ]
    for g, base_lr in zip(groups, (pcfg.lr, pcfg.head_lr or pcfg.lr)):
        g["base_lr"] = base_lr
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=pcfg.lr, weight_decay=pcfg.weight_decay)


def set_lr(opt: torch.optim.Optimizer, step: int, total: int, warm: int) -> None:
    """Linear warm-up over ``warm`` steps, then cosine to 0 at ``total``."""
    factor = min(1.0, (step + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(step / total, 1.0)))
    for g in opt.param_groups:
        g["lr"] = g["base_lr"] * factor


def transfer_loss(
    fabric, proj: nn.Module, teachers: list[nn.Module] | nn.Module, x, y, ce_weight: float, task
):
    """MSE between the projector's logits and the weak teachers' mean logits, + ce_weight x CE to ``y`` (per
    pixel for segmentation, ignored pixels left out: the task's loss).

    The teachers run under the same autocast as the projector, as they do when they label a student's batch.
    """
    with fabric.autocast():
        z = teacher_logits(teachers, x).float()
        logits = proj(x).float()
    mse = F.mse_loss(logits, z.clone())
    ce = task.loss(logits, y)
    return mse + ce_weight * ce, mse, ce


def train_projector(
    cfg: Config, fabric, pcfg: ProjectorConfig, out: Path, bundle, teachers: list[dict]
) -> dict:
    """LoRA transfer for one base; writes ``out/adapters.safetensors`` and returns its metrics."""
    task = task_of(cfg.data)
    train = bundle.train
    if pcfg.train_per_class:
        train = subset(train, per_class_subset(train.targets, pcfg.train_per_class, cfg.engine.seed))
    teacher_models = [engine.frozen(fabric, load_network(t["path"])[0]) for t in teachers]
    proj = build_base(pcfg, bundle.classes, cache_dir(cfg))
    targets = add_adapters(proj, pcfg.encoder_rank, pcfg.head_rank, pcfg.frozen_depth)
    n_adapter = sum(p.numel() for p in proj.parameters() if p.requires_grad)
    if fabric.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, cfg, "projector")
    proj = proj.to(fabric.device)
    probe = task.probe(bundle.val, cfg.engine.seed)
    zero_shot = task.evaluate(fabric, proj, probe, bundle.classes, 250, desc="zero-shot")

    world = fabric.world_size
    spe = engine.steps_per_epoch(len(train), pcfg.batch_size, world, drop_last=False)
    total = max(1, round(pcfg.epochs * spe))
    warm = max(1, round(0.05 * total))
    opt = adapter_optimizer(proj, pcfg)
    step, history = 0, []
    key = {  # what the adapters depend on: a state made from anything else is never resumed
        "total": total,
        "n_adapter": n_adapter,
        "teachers_sha256": [sha256(t["path"]) for t in teachers],
        "projector": {k: v for k, v in asdict(pcfg).items() if k != "adapter_dtype"},
        "seed": cfg.engine.seed,
        "data": [cfg.data.name, len(train)],
    }
    if proj.info.checkpoint_sha256:  # a user's base file: a state trained on another file is never resumed
        key["base_checkpoint_sha256"] = proj.info.checkpoint_sha256
    # never silently overwrite adapters trained from something else
    hint = f"use another --out, or delete {out} to restart"
    point = ResumePoint(
        out / STATE_FILE, key, "projector transfer", total, fabric, refuse=True, restart_hint=hint
    )
    st = point.load()
    if st is not None:
        proj.load_state_dict(st["adapters"], strict=False)
        opt.load_state_dict(st["optimizer"])
        step, history = st["step"], st["history"]
        fabric.print(f"projector: resuming at step {step}/{total}")
    every = max(1, min(50, spe))  # checkpoint interval (steps)
    proj_ddp, opt = fabric.setup(proj, opt)
    dl = engine.loader(fabric, train, pcfg.batch_size, shuffle=True, seed=cfg.engine.seed + 1)
    label = "pretrained" if proj.info.pretrained else "random"
    bar = engine.progress(
        fabric, total=total, initial=step, desc=f"projector ({pcfg.base}, {label})", unit="step"
    )
    t0 = time.perf_counter()
    proj_ddp.train()
    while step < total:
        epoch, start = divmod(step, spe)
        dl.sampler.set_position(epoch, start * pcfg.batch_size)
        for x, y in dl:
            set_lr(opt, step, total, warm)
            gen = engine.step_generator(cfg.engine.seed + 1, step, fabric.global_rank)
            x, y = transfer_batch(task, x, y, pcfg, len(bundle.classes), gen)
            loss, mse, ce = transfer_loss(fabric, proj_ddp, teacher_models, x, y, pcfg.ce_weight, task)
            opt.zero_grad(set_to_none=True)
            fabric.backward(loss)
            opt.step()
            step += 1
            bar.update(1)
            bar.set_postfix(mse=f"{mse.item():.3f}", ce=f"{ce.item():.3f}", refresh=False)
            stop = point.poll(step)
            if step % spe == 0 or step % every == 0 or step == total or stop:
                history.append({"step": step, "mse": mse.item(), "ce": ce.item()})
                state = {"adapters": adapter_tensors(proj), "optimizer": opt.state_dict(), "step": step}
                point.save(step, {**state, "history": history}, stop)
                break  # the loader restarts at the next step's position
    bar.close()
    seconds = time.perf_counter() - t0
    val = task.evaluate(fabric, proj, bundle.val, bundle.classes, 250, desc="val")
    logits = _val_logits(fabric, [proj, *teacher_models], probe, 250)  # this rank's share of the probe set
    logits = [task.per_label(t) for t in logits]  # rows of class scores (a logit map: one per pixel)
    agree = agreement(torch.stack(logits[1:]).mean(0), logits[0])
    path = out / ADAPTER_FILE
    metrics = {
        "base": proj.info.as_dict(),
        "adapter_targets": len(targets),
        "adapter_params": n_adapter,
        "encoder_rank": pcfg.encoder_rank,
        "head_rank": pcfg.head_rank,
        "image_size": pcfg.image_size,
        "teachers": [{k: t[k] for k in ("epoch", task.metric)} for t in teachers],
        "train_images": len(train),
        "steps": total,
        "seconds": seconds,
        "peak_memory_mib": peak_memory_mib(fabric.device),
        f"zero_shot_val_{task.metric}": zero_shot[task.metric],
        "zero_shot_probe_images": len(probe),
        **{f"val_{k}": val[k] for k in task.scores if k in val and k != "loss"},
        "teacher_agreement": agree,
        "history": history,
    }
    if fabric.is_global_zero:
        save_adapters(
            path, proj, pcfg, {"teachers": metrics["teachers"], f"val_{task.metric}": val[task.metric]}
        )
        metrics["adapter_bytes"] = path.stat().st_size
        storage = {
            "what": "LoRA adapters (all a user stores to regenerate labels; the base is public/seeded)",
            "adapter_file": path.name,
            "adapter_bytes": metrics["adapter_bytes"],
            "adapter_params": n_adapter,
        }
        write_results(out, metrics, storage)
    fabric.barrier()
    return metrics


def run_projector(cfg: Config, fabric) -> dict:
    task = task_of(cfg.data)
    pool = load_pool(cfg)
    bundle = task.load(cfg.data, cfg.engine.seed)
    teachers = weak_teachers(pool, cfg, len(bundle.classes))
    out = projector_path(cfg).parent
    result = train_projector(cfg, fabric, cfg.projector, out, bundle, teachers)
    kind = "pretrained" if result["base"]["pretrained"] else "random"
    m, name = task.metric, task.metric_name
    used = ", ".join("{:g}:{:.1f}".format(t["epoch"], t[m]) for t in result["teachers"])
    line = (
        f"projector {cfg.projector.base} ({kind}): val {name} {result[f'zero_shot_val_{m}']:.2f}% before LoRA "
        f"-> {result[f'val_{m}']:.2f}% after ({result['adapter_params']:,} adapter params, "
        f"{result.get('adapter_bytes', 0):,} B); weak teachers (epoch:{name}) {used}"
    )
    if cfg.projector.ablate_random_base and not cfg.projector.random_init:
        rnd = train_projector(
            cfg, fabric, replace(cfg.projector, random_init=True), out / RANDOM_BASE_FOLDER, bundle, teachers
        )
        result["random_base"] = {
            k: rnd[k] for k in (f"val_{m}", f"zero_shot_val_{m}", "teacher_agreement", "seconds")
        }
        line += f"; same on a seeded-random base: {rnd[f'val_{m}']:.2f}%"
        if fabric.is_global_zero:
            write_results(out, result, json.loads((out / STORAGE_FILE).read_text()))
    result["summary"] = line
    return result
