"""Stage 5: students trained from scratch on the distilled set, one run per (label source, student, seed).

Per iteration (supplement Table 3; RDED's evaluation where the paper is silent, SPEC B.6):

* a batch of ``batch_size`` distilled images from the seeded :class:`~hellodd.labels.Stream`: random-resized
  crop (area ``crop_min_scale``..1, RDED uses 1/factor) with horizontal flip, then CutMix (alpha 1, one
  box / lambda / permutation per batch);
* targets from the label source on exactly those pixels;
* loss ``mse``: MSE(student logits, target logits) + ``ce_weight`` x CE(student, un-mixed hard label)
  (G-VBSM's ``mse_gt``, HeLlO's "MSE + 0.025 CE"); ``kl``: KL at ``temperature`` (RDED); the ``hard``
  source has no logits and trains with cross-entropy on the CutMix-mixed one-hot targets;
* AdamW (lr, weight decay 0.01), per-epoch schedule ``half-cosine`` (RDED: lr * (1 + cos(pi t / 2T)) / 2,
  ends at half) or ``cosine`` (to 0).

Reported per run: top-1 / top-5 on the real validation split after the **last** epoch (no selection on
the test set), seconds per iteration (median after 5 warm-up iterations, label generation included),
peak memory (CUDA max allocated on a GPU; on a CPU the process's peak RSS so far, which is monotone across
the runs of one process: ``benchmarks/bench_labels.py`` measures each source in a fresh process), and the
extra storage of the label source (:mod:`hellodd.storage`, from the real files).  Seeds vary the student's
initialisation and the augmentation stream; ``stored`` labels are written once per seed (its storage is one
seed's files).  Under DDP each rank draws its own share of every batch from the stream (rank in the seed)
and labels it itself; stored labels are written and read per rank.  With ``evaluate.parallel=runs`` each rank
trains whole runs alone instead (one-process runs; :func:`run_evaluate`).
"""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from hellodd import engine
from hellodd.config import Config, split_source
from hellodd.data import load_data
from hellodd.errors import UserError
from hellodd.io import (
    digest,
    load_state,
    read_json,
    save_state,
    sha256,
    tensor_sha256,
    write_bytes,
    write_json,
)
from hellodd.labels import (
    HardLabels,
    LabelStore,
    MeanLogits,
    ModelLabels,
    Refined,
    StoredLabels,
    kept_epochs,
    render,
    student_stream,
    write_label_stores,
)
from hellodd.models import build_model
from hellodd.report import mib, peak_memory_mib, stage_dir, write_config, write_results

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


def logit_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    y: torch.Tensor,
    loss: str,
    ce_weight: float,
    temperature: float,
) -> torch.Tensor:
    """A student's loss against a labeller's logits: MSE + ``ce_weight`` x CE to ``y``, or KL at ``temperature``."""
    if loss == "kl":
        t = temperature
        return F.kl_div(
            F.log_softmax(logits / t, -1),
            F.log_softmax(targets / t, -1),
            log_target=True,
            reduction="batchmean",
        )
    return F.mse_loss(logits, targets) + ce_weight * F.cross_entropy(logits, y)


def gift_loss(
    logits: torch.Tensor, targets: torch.Tensor, y: torch.Tensor, smoothing: float = 0.1
) -> torch.Tensor:
    """GIFT's refined target and loss: ``1 - cos(logits, normalize(targets) + 0.1 * normalize(smooth(y)))``,
    with ``smooth(y)`` the one-hot label smoothed by ``smoothing`` (the rest spread over the other classes).
    ``y`` is the un-mixed hard label, as in the CE term of the ``mse`` loss."""
    c = logits.shape[-1]
    smooth = torch.full_like(targets, smoothing / (c - 1)).scatter_(1, y[:, None], 1.0 - smoothing)
    refined = F.normalize(targets, dim=-1) + 0.1 * F.normalize(smooth, dim=-1)
    return 1.0 - F.cosine_similarity(logits, refined, dim=-1).mean()


def student_loss(
    cfg: Config, logits: torch.Tensor, targets: torch.Tensor, kind: str, y: torch.Tensor
) -> torch.Tensor:
    ev = cfg.evaluate
    if kind == "probs":
        return torch.sum(-targets * F.log_softmax(logits, -1), -1).mean()
    if kind == "gift":
        return gift_loss(logits, targets, y)
    return logit_loss(logits, targets, y, ev.loss, ev.ce_weight, ev.temperature)


def student_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """Supplement Table 3: AdamW; no decay on biases and norm weights (RDED's ``get_parameters``)."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr)


def student_step(
    cfg: Config, fabric, model, opt, source, stream, images, labels, epoch: int, step: int
) -> torch.Tensor:
    """One student iteration, as timed per label source: render the batch's views, label them, one optimiser
    step.  Stored labels replay their own copy of the stream's batches; other sources draw from ``stream``."""
    batches = source if hasattr(source, "batch_params") else stream  # stored labels replay their views
    idx, crops, mix = batches.batch_params(epoch, step)
    x = render(images, idx, crops, mix, fabric.device)
    y = labels[idx].to(fabric.device)
    with fabric.autocast():  # engine.precision: labels are generated at the student's precision
        targets = source.targets(x, y, mix, epoch, step)
        out = model(x).float()
    loss = student_loss(cfg, out, targets, source.kind, y)
    opt.zero_grad(set_to_none=True)
    fabric.backward(loss)
    opt.step()
    if fabric.device.type == "cuda":
        torch.cuda.synchronize()
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
) -> dict:
    """One student run (``evaluate.epochs`` over the stream), validated at the end: its result row.

    With ``state_path``, resumable: the student, optimiser and CPU generator are saved every tenth of the
    run and on SIGTERM (:func:`hellodd.engine.stop_requested`), tagged with ``key`` (the digest of everything
    the run depends on); a state with another key is ignored.  A resumed run ends exactly where an
    uninterrupted one does: its views and learning rates are functions of (epoch, step) only."""
    ev = cfg.evaluate
    torch.manual_seed(seed)
    model = build_model(arch, num_classes, images.shape[1], images.shape[-1])
    lr = RDED_LR.get(arch, ev.lr) if ev.lr_per_arch else ev.lr
    opt = student_optimizer(model, lr, ev.weight_decay)
    plain = model  # validation runs on the uncompiled module (same parameters): no recompile for eval mode
    start_epoch, times, step_total, before = 0, [], 0, 0.0
    if state_path is not None and state_path.is_file():
        st = load_state(state_path)
        if st.get("key") == key:
            plain.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            torch.set_rng_state(st["rng"])
            if st.get("cuda_rng") and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(st["cuda_rng"])
            start_epoch, times, step_total, before = st["epoch"], st["times"], st["steps"], st["seconds"]
            fabric.print(
                f"evaluate: {source.name} -> {arch}, seed {seed}: resuming at epoch {start_epoch}/{ev.epochs}"
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
    for epoch in range(start_epoch, ev.epochs):
        for g in opt.param_groups:
            g["lr"] = lr * lr_factor(ev.schedule, epoch, ev.epochs)
        for step in range(stream.steps_per_epoch):
            t0 = time.perf_counter()
            loss = student_step(cfg, fabric, model, opt, source, stream, images, labels, epoch, step)
            times.append(time.perf_counter() - t0)
            step_total += 1
            engine.test_signal(step_total)
        bar.update(1)
        stop = engine.stop_requested(fabric)
        if state_path is not None and ((epoch + 1) % every == 0 or stop) and epoch + 1 < ev.epochs:
            if fabric.is_global_zero:
                save_state(
                    state_path,
                    {
                        "model": plain.state_dict(),
                        "optimizer": opt.state_dict(),
                        "rng": torch.get_rng_state(),
                        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                        "epoch": epoch + 1,
                        "times": times,
                        "steps": step_total,
                        "seconds": before + time.perf_counter() - started,
                        "key": key,
                    },
                )
            fabric.barrier()
        if stop and epoch + 1 < ev.epochs:  # at the last epoch, finishing costs less than resuming
            raise engine.Preempted(
                f"evaluation ({source.name} -> {arch}, seed {seed})", epoch + 1, ev.epochs, state_path
            )
    bar.close()
    val_metrics = engine.evaluate(fabric, plain if ev.compile else model, val, ev.eval_batch_size, desc="val")
    warm = times[5:] if len(times) > 5 else times
    return {
        "source": source.name,
        "student": arch,
        "seed": seed,
        "lr": lr,
        "top1": val_metrics["top1"],
        "top5": val_metrics["top5"],
        "iterations": step_total,
        "seconds_per_iteration": statistics.median(warm) if warm else 0.0,
        "seconds": before + time.perf_counter() - started,  # the run: training, label generation, validation
        "final_loss": float(loss.item()),
        "peak_memory_mib": peak_memory_mib(fabric.device),
    }


def run_key(cfg: Config, images_sha: str, source, arch: str, seed: int, world: int) -> str:
    """Everything one (source, student, seed) run depends on: a finished run or a resume state made from
    anything else is not reused."""
    from dataclasses import asdict

    chosen = ("label_sources", "baseline_sources", "students", "seeds")
    return digest(
        {
            "images_sha256": images_sha,
            "source": source.name,
            "source_identity": getattr(source, "identity", {}),
            "student": arch,
            "seed": seed,
            "engine": [cfg.engine.seed, cfg.engine.precision, world],
            "evaluate": {k: v for k, v in asdict(cfg.evaluate).items() if k not in chosen},
        }
    )


def stored_key(images, teacher_path, stream, dtype: str, topk: int) -> dict:
    """Everything stored labels depend on: a file made from anything else is never reused."""
    return {
        "format": "hellodd-stored-labels-v2",
        "images_sha256": tensor_sha256(images),
        "teacher_sha256": sha256(teacher_path),
        "stream": {
            k: getattr(stream, k)
            for k in ("seed", "batch", "rank", "world", "n", "size", "min_scale", "alpha")
        },
        "dtype": dtype,
        "topk": topk,
    }


ONLINE = ("teacher", "weak-teachers", "projector", "projector-transfer")  # the same for every seed


def build_label_sources(
    cfg: Config, fabric, images, stream, seed: int, num_classes: int, out: Path, cache: dict | None = None
) -> tuple[dict, dict]:
    """The requested label sources for one seed, and the storage each costs (from :mod:`hellodd.storage`).

    Online labellers (models, compiled with ``evaluate.compile``) do not depend on the seed: pass the same
    ``cache`` dict for every seed and they are built once."""
    from hellodd import storage
    from hellodd.models import load_classifier

    ev = cfg.evaluate
    cache = {} if cache is None else cache
    built, cost = {}, {}
    teacher_path = teacher = None
    bases = list(dict.fromkeys(split_source(n)[0] for n in ev.label_sources))  # teacher+gift: the teacher
    if {"teacher", "stored", "compressed"} & set(bases):
        from hellodd.teachers import load_pool

        teacher_path = load_pool(cfg)["final_path"]
        if "_teacher" not in cache:
            cache["_teacher"] = engine.frozen(fabric, load_classifier(teacher_path)[0])
        teacher = cache["_teacher"]
    stores = {}  # stored and compressed: written in one teacher pass (the same views)
    for name in ("stored", "compressed"):
        if name in bases:
            topk = 0 if name == "stored" else ev.compressed_topk
            kept = ev.epochs if name == "stored" else kept_epochs(ev.epochs, ev.compressed_epoch_fraction)
            root = out / f"{name}-labels" / f"seed{seed}" / f"rank{fabric.global_rank}"
            key = stored_key(images, teacher_path, stream, ev.stored_dtype, topk)
            stores[name] = LabelStore(root, key, kept, ev.stored_dtype, topk)
    files = dict(
        zip(stores, write_label_stores(list(stores.values()), teacher, images, stream, fabric.device))
    )
    for name in bases:
        if name in cache:
            built[name], cost[name] = cache[name]
        elif name == "hard":
            built[name] = HardLabels(num_classes)
            cost[name] = storage.label_storage("hard")
        elif name == "teacher":
            built[name] = ModelLabels("teacher", teacher)
            built[name].identity = {"teacher_sha256": sha256(teacher_path)}
            cost[name] = storage.label_storage("teacher", teacher_file=teacher_path)
        elif name == "weak-teachers":
            from hellodd.projector import weak_teachers
            from hellodd.teachers import load_pool

            pool = load_pool(cfg)
            pool["classes"] = list(range(num_classes))
            chosen = weak_teachers(pool, cfg)
            models = [load_classifier(t["path"])[0] for t in chosen]
            built[name] = ModelLabels(name, engine.frozen(fabric, MeanLogits(models)))
            built[name].identity = {"weak_teachers_sha256": [sha256(t["path"]) for t in chosen]}
            cost[name] = storage.label_storage("weak-teachers", teacher_files=[t["path"] for t in chosen])
        elif name in ("projector", "projector-transfer"):
            from hellodd.projector import load_projector, merged_for_inference, projector_path
            from hellodd.sets import projector_for

            # projector: the adapters that go with this set (view-adapted if distill made them);
            # projector-transfer: stage 3's, for the ablation of the view adaptation
            path = projector_for(cfg, images) if name == "projector" else projector_path(cfg)
            p = load_projector(path, "cpu", Path(cfg.out) / "cache")
            built[name] = ModelLabels(name, engine.frozen(fabric, merged_for_inference(p)))
            built[name].identity = {"adapters_sha256": sha256(path)}
            cost[name] = storage.label_storage("projector", adapter_file=path)
        elif name in stores:
            st = stores[name]
            built[name] = StoredLabels(st.root, stream, st.key, num_classes, st.epochs, name)
            built[name].identity = {"store": digest(st.key), "epochs": st.epochs}
            cost[name] = storage.label_storage("stored", stored_files=files[name])
            if name == "compressed":
                cost[name]["formula"] += (
                    f" (top-{st.topk} logits + rest mean, {st.epochs} of {ev.epochs} epochs; "
                    f"e replays e mod {st.epochs})"
                )
    for name in ONLINE:
        if name in built and name not in cache:
            if ev.compile:
                built[name].model = engine.compile_frozen(built[name].model)
            cache[name] = built[name], cost[name]
    for name in ev.label_sources:  # refined sources: the base's targets, the base's bytes
        base, refinement = split_source(name)
        if refinement:
            built[name], cost[name] = Refined(built[base], refinement), cost[base]
    return {n: built[n] for n in ev.label_sources}, {n: cost[n] for n in ev.label_sources}


def _table(rows: list[dict], cost: dict) -> str:
    head = (
        "| label source | student | top-1 (mean ± std) | top-5 | s / iteration | peak memory (MiB) | extra storage (bytes) |\n"
        "|---|---|---|---|---|---|---|"
    )
    lines = [head]
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["source"], r["student"]), []).append(r)
    for (src, arch), rs in groups.items():
        t1 = [r["top1"] for r in rs]
        sd = statistics.stdev(t1) if len(t1) > 1 else 0.0
        lines.append(
            f"| {src} | {arch} | {statistics.mean(t1):.2f} ± {sd:.2f} (n={len(t1)}) | {statistics.mean(r['top5'] for r in rs):.2f} | "
            f"{statistics.median(r['seconds_per_iteration'] for r in rs):.4f} | {max(r['peak_memory_mib'] for r in rs):.0f} | "
            f"{cost[src]['bytes']:,} ({mib(cost[src]['bytes']):.3f} MiB) |"
        )
    return "\n".join(lines)


def _student_run(fabric, runs: Path, key: str, src, arch: str, seed: int, train, where: str) -> dict:
    """One (source, student, seed) run, or its row from ``runs/`` when it finished earlier with the same
    ``key`` (everything it depends on); its resume state lives beside it until it finishes.  ``train(state)``
    trains it; ``where`` ends its line (the rank, when runs are spread)."""
    line = f"evaluate: {src.name:9s} -> {arch}, seed {seed}: top-1"
    finished = runs / f"{src.name}-{arch}-seed{seed}.json"
    kept = read_json(finished) if finished.is_file() else {}
    if kept.get("key") == key:
        fabric.print(f"{line} {kept['row']['top1']:.2f}% (finished earlier){where}")
        return kept["row"]
    state = runs / f"{src.name}-{arch}-seed{seed}.state.pt"
    row = train(state)
    if fabric.is_global_zero:
        write_json(finished, {"key": key, "row": row})
        state.unlink(missing_ok=True)
    fabric.print(f"{line} {row['top1']:.2f}%{where}")
    return row


def evaluate_dir(cfg: Config) -> Path:
    """``<out>/evaluate/<set>/``: one folder per distilled set, so evaluating one never overwrites another."""
    from hellodd.sets import distilled_dir

    return stage_dir(cfg, "evaluate") / distilled_dir(cfg).name


def run_evaluate(cfg: Config, fabric) -> dict:
    from hellodd.sets import distilled_dir, read_set

    ev = cfg.evaluate
    out = evaluate_dir(cfg)
    d = distilled_dir(cfg)
    if not d.is_dir():
        raise UserError(
            f"{d}: no distilled set; run 'hellodd distill' first (same --out and distill settings)"
        )
    images, labels, manifest = read_set(d)
    bundle = load_data(cfg.data, cfg.engine.seed)
    if manifest.get("classes") != bundle.classes:
        raise UserError(f"{d}: distilled for other classes than the {cfg.data.name} data in this config")
    if fabric.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, cfg, "evaluate")
    t0 = time.perf_counter()
    images_sha = tensor_sha256(images)
    plan = [(seed, arch, name) for seed in ev.seeds for arch in ev.students for name in ev.label_sources]
    spread = ev.parallel == "runs" and fabric.world_size > 1
    # "runs": this rank's share of the plan, each run trained alone on this rank's device (a one-process run).
    # A (seed, source) pair goes to one rank with all its students: stored labels are per seed, one writer
    worker = engine.solo(fabric, cfg.engine.precision) if spread else fabric
    pairs = [(seed, name) for seed in ev.seeds for name in ev.label_sources]
    owner = {pair: i % fabric.world_size for i, pair in enumerate(pairs)}
    mine = [r for r in plan if owner[(r[0], r[2])] == fabric.global_rank] if spread else plan
    done, cost, online = {}, {}, {}
    for seed in ev.seeds:
        todo = [(arch, name) for s, arch, name in mine if s == seed]
        if not todo:
            continue
        stream = student_stream(
            ev, images, cfg.engine.seed * 1000 + seed, worker.global_rank, worker.world_size
        )
        needed = [n for n in ev.label_sources if n in {name for _, name in todo}]
        only = replace(cfg, evaluate=replace(ev, label_sources=needed))
        sources, c = build_label_sources(only, worker, images, stream, seed, bundle.num_classes, out, online)
        for k, v in c.items():
            cost.setdefault(k, v)  # stored labels: the first seed's files
        for arch, name in todo:
            src = sources[name]
            key = run_key(cfg, images_sha, src, arch, seed, worker.world_size)

            args = (cfg, worker, arch, src, images, labels, bundle.val, bundle.num_classes, seed, stream)
            train = partial(train_student, *args, key=key)  # train(state_path)
            where = f" (rank {fabric.global_rank})" if spread else ""
            done[(seed, arch, name)] = _student_run(worker, out / "runs", key, src, arch, seed, train, where)
    if spread:  # every rank's rows and label costs, on every rank
        import torch.distributed as dist

        shares = [None] * fabric.world_size
        dist.all_gather_object(shares, (done, cost))
        for their_rows, their_cost in shares:
            done.update(their_rows)
            for k, v in their_cost.items():
                cost.setdefault(k, v)
    rows = [done[r] for r in plan]
    cost = {k: cost[k] for k in ev.label_sources if k in cost}
    table = _table(rows, cost)
    by_source = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(r["top1"])
    means = {k: statistics.mean(v) for k, v in by_source.items()}
    metrics = {
        "distilled_set": str(d),
        "set": d.name,
        "images_sha256": images_sha,  # results belong to these images (an export checks it)
        "ipc": cfg.distill.ipc,
        "epochs": ev.epochs,
        "world_size": fabric.world_size,
        "parallel": "runs" if spread else "data",  # runs: each run was a one-process run on one rank
        "rows": rows,
        "storage": cost,
        "mean_top1": means,
        "table": table,
        "seconds": time.perf_counter() - t0,
    }
    parts = [f"{k} {v:.2f}%" for k, v in means.items()]
    metrics["summary"] = (
        f"evaluate {d.name} ({', '.join(ev.students)}, {len(ev.seeds)} seeds, {ev.epochs} epochs): mean top-1 "
        + ", ".join(parts)
    )
    if fabric.is_global_zero:
        write_results(out, metrics, {k: v for k, v in cost.items()})
        write_bytes(out / "results.md", (table + "\n").encode())
        write_bytes(out / "results.json", json.dumps(rows, indent=2).encode())
    fabric.barrier()
    return metrics
