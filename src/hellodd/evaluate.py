"""Stage 5: students trained from scratch on the distilled set, one run per (label source, student, seed).

Per iteration (supplement Table 3; RDED's evaluation where the paper is silent, docs/method.md):

* a batch of ``batch_size`` distilled images from the seeded :class:`~hellodd.augment.Stream`: random-resized
  crop (area ``crop_min_scale``..1, RDED uses 1/factor) with horizontal flip, then CutMix (alpha 1, one
  box / lambda / permutation per batch);
* targets from the label source on exactly those pixels;
* loss ``mse``: MSE(student logits, target logits) + ``ce_weight`` x CE(student, un-mixed hard label)
  (G-VBSM's ``mse_gt``, HeLlO's "MSE + 0.025 CE"); ``kl``: KL at ``temperature`` (RDED); the ``hard``
  source has no logits and trains with cross-entropy on the CutMix-mixed one-hot targets;
* AdamW (lr, weight decay 0.01), per-epoch schedule ``half-cosine`` (RDED: lr * (1 + cos(pi t / 2T)) / 2,
  ends at half) or ``cosine`` (to 0).

Reported per run: the task's score and the one beside it (top-1 / top-5) on the real validation split after the **last** epoch (no selection on
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
import shutil
import statistics
import time
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path

import torch.distributed as dist

from hellodd import engine
from hellodd.augment import student_stream
from hellodd.config import Config, scored_by
from hellodd.config.schema import is_compressor_source
from hellodd.errors import UserError
from hellodd.io import digest, read_json, tensor_sha256, write_bytes, write_json
from hellodd.layout import (
    RESULTS_JSON,
    RESULTS_MD,
    distilled_dir,
    evaluate_dir,
    label_store_dir,
    student_run_file,
    student_runs_dir,
    student_state_file,
)
from hellodd.records import write_config, write_results
from hellodd.sets import read_set
from hellodd.sources import build_label_sources, is_written
from hellodd.students import train_student
from hellodd.tables import results_table
from hellodd.tasks import task_of


def seeds_of(ev, name: str) -> list[int]:
    """The seeds source ``name`` is evaluated on: the compressors' sweep may use fewer (evaluate.sweep_seeds)."""
    if ev.sweep_seeds and is_compressor_source(name):
        return [s for s in ev.seeds if s in ev.sweep_seeds]
    return list(ev.seeds)


def profile(rows: list[dict], building: float) -> dict:
    """Where the evaluation's seconds went: building the label sources (loading labellers, writing stored
    labels; labellers compile at their first use, inside the runs), then each part of the student runs (:class:`hellodd.students.PartClock`), summed
    over this process's runs and per source.  Runs finished earlier carry no parts and count nowhere."""
    total, by_source = {"label_sources_built": building}, {}
    for r in rows:
        for part, sec in r.get("parts_seconds", {}).items():
            total[part] = total.get(part, 0.0) + sec
            mine = by_source.setdefault(r["source"], {})
            mine[part] = mine.get(part, 0.0) + sec
    return {"total": total, "by_source": by_source}


def run_key(cfg: Config, images_sha: str, source, arch: str, seed: int, world: int) -> str:
    """Everything one (source, student, seed) run depends on: a finished run or a resume state made from
    anything else is not reused."""
    chosen = ("label_sources", "baseline_sources", "students", "seeds", "keep_stored", "sweep_seeds")
    return digest(
        {
            "images_sha256": images_sha,
            "source": source.name,
            "source_identity": source.identity,
            "student": arch,
            "seed": seed,
            "engine": [cfg.engine.seed, cfg.engine.precision, world],
            "evaluate": {k: v for k, v in asdict(cfg.evaluate).items() if k not in chosen},
        }
    )


def _student_run(fabric, runs: Path, key: str, src, arch: str, seed: int, train, where: str) -> dict:
    """One (source, student, seed) run, or its row from ``runs/`` when it finished earlier with the same
    ``key`` (everything it depends on); its resume state lives beside it until it finishes.  ``train(state)``
    trains it; ``where`` ends its line (the rank, when runs are spread)."""
    finished = student_run_file(runs, src.name, arch, seed)
    kept = read_json(finished) if finished.is_file() else {}

    def line(row: dict) -> str:
        task = scored_by(row)  # a row kept from an earlier version names its score by its metric's key
        return f"evaluate: {src.name:9s} -> {arch}, seed {seed}: {task.metric_name} {task.read(row):.2f}%"

    if kept.get("key") == key:
        fabric.print(f"{line(kept['row'])} (finished earlier){where}")
        return kept["row"]
    state = student_state_file(runs, src.name, arch, seed)
    row = train(state)
    if fabric.is_global_zero:
        write_json(finished, {"key": key, "row": row})
        state.unlink(missing_ok=True)
    fabric.print(f"{line(row)}{where}")
    return row


def run_evaluate(cfg: Config, fabric) -> dict:
    ev = cfg.evaluate
    out = evaluate_dir(cfg)
    d = distilled_dir(cfg)
    if not d.is_dir():
        raise UserError(
            f"{d}: no distilled set; run 'hellodd distill' first (same --out and distill settings)"
        )
    images, labels, manifest = read_set(d)
    task = task_of(cfg.data)
    bundle = task.load(cfg.data, cfg.engine.seed)
    if manifest.get("classes") != bundle.classes:
        raise UserError(f"{d}: distilled for other classes than the {cfg.data.name} data in this config")
    if fabric.is_global_zero:
        out.mkdir(parents=True, exist_ok=True)
        write_config(out, cfg, "evaluate")
    t0 = time.perf_counter()
    images_sha = tensor_sha256(images)
    plan = [
        (seed, arch, name)
        for seed in ev.seeds
        for arch in ev.students
        for name in ev.label_sources
        if seed in seeds_of(ev, name)
    ]
    spread = ev.parallel == "runs" and fabric.world_size > 1
    # "runs": this rank's share of the plan, each run trained alone on this rank's device (a one-process run).
    # A (seed, source) pair goes to one rank with all its students: stored labels are per seed, one writer
    worker = engine.solo(fabric, cfg.engine.precision) if spread else fabric
    pairs = [(seed, name) for seed in ev.seeds for name in ev.label_sources if seed in seeds_of(ev, name)]
    owner = {pair: i % fabric.world_size for i, pair in enumerate(pairs)}
    mine = [r for r in plan if owner[(r[0], r[2])] == fabric.global_rank] if spread else plan
    done, cost, online, building = {}, {}, {}, 0.0
    for seed in ev.seeds:
        todo = [(arch, name) for s, arch, name in mine if s == seed]
        if not todo:
            continue
        stream = student_stream(
            ev, images, cfg.engine.seed * 1000 + seed, worker.global_rank, worker.world_size
        )
        needed = [n for n in ev.label_sources if n in {name for _, name in todo}]
        only = replace(cfg, evaluate=replace(ev, label_sources=needed))
        t1 = time.perf_counter()
        sources = build_label_sources(only, worker, images, stream, seed, bundle.num_classes, online)
        building += time.perf_counter() - t1  # loading labellers, writing this seed's stored labels
        for k, src in sources.items():
            cost.setdefault(k, src.storage)  # stored labels: the first seed's files
        for arch, name in todo:
            src = sources[name]
            key = run_key(cfg, images_sha, src, arch, seed, worker.world_size)

            args = (cfg, worker, arch, src, images, labels, bundle.val, bundle.num_classes, seed, stream)
            train = partial(train_student, *args, key=key, classes=bundle.classes)  # train(state_path)
            where = f" (rank {fabric.global_rank})" if spread else ""
            done[(seed, arch, name)] = _student_run(
                worker, student_runs_dir(cfg), key, src, arch, seed, train, where
            )
        if not ev.keep_stored:
            for name in needed:
                if is_written(name):
                    shutil.rmtree(label_store_dir(cfg, name, seed) / f"rank{worker.global_rank}")
    if spread:  # every rank's rows and label costs, on every rank
        shares = [None] * fabric.world_size
        dist.all_gather_object(shares, (done, cost))
        for their_rows, their_cost in shares:
            done.update(their_rows)
            for k, v in their_cost.items():
                cost.setdefault(k, v)
    rows = [done[r] for r in plan]
    cost = {k: cost[k] for k in ev.label_sources if k in cost}
    table = results_table(rows, cost)
    by_source = {}
    for r in rows:
        by_source.setdefault(r["source"], []).append(scored_by(r).read(r))
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
        "task": task.name,
        "score_name": task.metric_name,
        "mean_score": means,  # the task's headline metric per source
        "table": table,
        "seconds": time.perf_counter() - t0,
        "profile": profile(rows, building),
    }
    metrics["stored_deleted"] = not ev.keep_stored and any(is_written(n) for n in ev.label_sources)
    metrics["sweep_seeds"] = {n: seeds_of(ev, n) for n in ev.label_sources if seeds_of(ev, n) != ev.seeds}
    parts = [f"{k} {v:.2f}%" for k, v in means.items()]
    metrics["summary"] = (
        f"evaluate {d.name} ({', '.join(ev.students)}, {len(ev.seeds)} seeds, {ev.epochs} epochs): "
        f"mean {task.metric_name} " + ", ".join(parts)
    )
    if metrics["stored_deleted"]:
        metrics["summary"] += "; stored label files deleted after each seed (bytes measured before)"
    if fabric.is_global_zero:
        write_results(out, metrics, {k: v for k, v in cost.items()})
        write_bytes(out / RESULTS_MD, (table + "\n").encode())
        write_bytes(out / RESULTS_JSON, json.dumps(rows, indent=2).encode())
    fabric.barrier()
    return metrics
