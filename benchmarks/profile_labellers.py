"""Where a label's time goes: the teacher and the merged projector of a finished run, labelling one student
batch, eager vs compiled vs compiled with inductor's freezing (:func:`hellodd.engine.compile_frozen`).

    python benchmarks/profile_labellers.py --out runs/fashion-mnist [--mode eager|compiled|frozen|all]

Each mode runs in its own process (dynamo caches compiled code per module, so two modes in one process
would share it).  Per mode: the median seconds per batch of both labellers (interleaved, the preset's
autocast, inputs = the distilled images as the students see them), the largest logit difference from the
eager float32 labels and the top-1 agreement with them, and the PyTorch profiler's table of the projector's
most expensive operators.  Prints what it measured; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

MODES = ("eager", "compiled", "frozen")


def run(out: str, preset: str, mode: str, iters: int, rows: int) -> None:
    from torch.profiler import profile

    from hellodd import config as C
    from hellodd import engine
    from hellodd.augment import to_float
    from hellodd.layout import distilled_dir
    from hellodd.models import load_classifier
    from hellodd.projector import load_projector, merged_for_inference
    from hellodd.sets import projector_for, read_set
    from hellodd.teachers import load_pool

    cfg = C.apply_overrides(C.preset(preset), [f"out={out}"])
    images, _, _ = read_set(distilled_dir(cfg))
    x = to_float(images[: cfg.evaluate.batch_size])
    projector = merged_for_inference(load_projector(projector_for(cfg, images), "cpu", Path(out) / "cache"))
    teacher = load_classifier(load_pool(cfg)["final_path"])[0].eval().requires_grad_(False)
    bf16 = cfg.engine.precision.startswith("bf16")

    def label(model, autocast=bf16):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            return model(x).float()

    reference = {"teacher": label(teacher, False), "projector": label(projector, False)}
    wrap = {"eager": lambda m: m, "compiled": torch.compile, "frozen": engine.compile_frozen}[mode]
    models = {"teacher": wrap(teacher), "projector": wrap(projector)}
    times = {k: [] for k in models}
    for i in range(iters + 3):
        for k, m in models.items():
            t0 = time.perf_counter()
            z = label(m)
            if i >= 3:
                times[k].append(time.perf_counter() - t0)
    print(f"## {mode} (batch {len(x)}, {'bf16 autocast' if bf16 else 'float32'})")
    for k, m in models.items():
        z = label(m)
        diff = (z - reference[k]).abs().max().item()
        agree = 100 * (z.argmax(1) == reference[k].argmax(1)).float().mean().item()
        print(
            f"{k:<10} {statistics.median(times[k]):.4f} s/batch; max |logit - eager fp32| {diff:.4f}, "
            f"top-1 agreement {agree:.1f}%"
        )
    with profile() as prof:
        for _ in range(3):
            label(models["projector"])
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=40))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="a run folder with teachers/, projector/ and distill/")
    ap.add_argument("--preset", default="fashion-mnist")
    ap.add_argument("--mode", default="all", choices=(*MODES, "all"))
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--rows", type=int, default=12)
    args = ap.parse_args()
    if args.mode != "all":
        run(args.out, args.preset, args.mode, args.iters, args.rows)
        return
    for mode in MODES:
        cmd = [sys.executable, __file__, "--out", args.out, "--preset", args.preset, "--mode", mode]
        subprocess.run([*cmd, "--iters", str(args.iters), "--rows", str(args.rows)], check=True)


if __name__ == "__main__":
    main()
