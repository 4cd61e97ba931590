"""Seconds per student iteration and peak memory, per label source, on a finished run's distilled set.

    python benchmarks/bench_labels.py --out runs/fashion-mnist [--iters 50] [--student convnet]

Timing: all sources in one process, interleaved round-robin so machine load hits them alike; each
iteration is the evaluation's own (:func:`hellodd.evaluate.student_step`: render the augmented batch,
targets from the source, student forward/backward/step) at the preset's precision, with students and online
labellers compiled when the preset's ``evaluate.compile`` says so; the median of ``--iters`` iterations after
5 warm-up iterations is printed.  ``--set KEY=VALUE`` overrides the preset (``evaluate.compile=false``).  Memory: each source again in a fresh
subprocess (``--only SOURCE``), whose peak RSS (CPU) or CUDA max-allocated (GPU) is printed: RSS of one
shared process would only ever grow.  Prints what it measured; asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def measure(
    out: str, sources: list[str], iters: int, student: str, preset: str, overrides: list[str]
) -> dict:
    from hellodd import config as C
    from hellodd import engine
    from hellodd.augment import student_stream
    from hellodd.layout import distilled_dir
    from hellodd.models import build_model
    from hellodd.records import peak_memory_mib
    from hellodd.sets import read_set
    from hellodd.sources import build_label_sources
    from hellodd.students import student_optimizer, student_step

    cfg = C.apply_overrides(
        C.preset(preset),
        [
            f"out={out}",
            f"evaluate.label_sources={','.join(sources)}",
            f"evaluate.epochs={iters + 5}",
            *overrides,
        ],
    )
    fabric = engine.make_fabric(cfg.engine)  # the preset's precision, as in the evaluation
    images, labels, manifest = read_set(distilled_dir(cfg))
    stream = student_stream(cfg.evaluate, images, 0)
    scratch = Path(tempfile.mkdtemp(prefix="hellodd-bench-"))  # stored labels for the timed iterations
    built = build_label_sources(cfg, fabric, images, stream, 0, len(manifest["classes"]), stores_in=scratch)
    steps = {}
    for (
        s
    ) in built:  # each source its own student, set up as train_student does (compiled with evaluate.compile)
        torch.manual_seed(0)
        model = build_model(student, len(manifest["classes"]), images.shape[1], images.shape[-1])
        opt = student_optimizer(model, cfg.evaluate.lr, cfg.evaluate.weight_decay)
        steps[s] = fabric.setup(torch.compile(model) if cfg.evaluate.compile else model, opt)
    times = {s: [] for s in built}
    for it in range(iters + 5):
        for name, src in built.items():
            model, opt = steps[name]
            t0 = time.perf_counter()
            student_step(cfg, fabric, model, opt, src, stream, images, labels, it, 0)
            times[name].append(time.perf_counter() - t0)
    shutil.rmtree(scratch, ignore_errors=True)
    return {
        s: {
            "seconds_per_iteration": statistics.median(t[5:]),
            "storage_bytes": built[s].storage["bytes"],
            "peak_memory_mib": peak_memory_mib(fabric.device),
        }
        for s, t in times.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="a run folder with teachers/, projector/ and distill/")
    ap.add_argument("--preset", default="fashion-mnist")
    ap.add_argument("--sources", default="hard,teacher,stored,projector")
    ap.add_argument("--student", default="convnet")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    ap.add_argument("--only", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.only:
        print(
            json.dumps(measure(args.out, [args.only], args.iters, args.student, args.preset, args.overrides))
        )
        return
    sources = args.sources.split(",")
    shared = measure(args.out, sources, args.iters, args.student, args.preset, args.overrides)
    from hellodd import config as C

    cfg = C.apply_overrides(C.preset(args.preset), args.overrides)
    print(
        f"student {args.student}, batch {cfg.evaluate.batch_size}, precision {cfg.engine.precision}, "
        f"compile {cfg.evaluate.compile}; {args.iters} timed iterations per source (median)"
    )
    print(f"{'source':<10} {'s/iter':>9} {'peak MiB (own process)':>24} {'extra storage (B)':>18}")
    for s in sources:
        r = subprocess.run(
            [
                sys.executable,
                __file__,
                "--out",
                args.out,
                "--preset",
                args.preset,
                "--student",
                args.student,
                "--iters",
                "10",
                "--only",
                s,
                *[f"--set={o}" for o in args.overrides],
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        own = json.loads(r.stdout.strip().splitlines()[-1])[s]
        print(
            f"{s:<10} {shared[s]['seconds_per_iteration']:>9.4f} {own['peak_memory_mib']:>24.0f} {shared[s]['storage_bytes']:>18,}"
        )
    if "projector" in shared and "teacher" in shared:
        ratio = shared["projector"]["seconds_per_iteration"] / shared["teacher"]["seconds_per_iteration"]
        print(f"projector / teacher time per iteration: {ratio:.2f}x")


if __name__ == "__main__":
    main()
