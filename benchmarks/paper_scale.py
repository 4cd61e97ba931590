"""The paper's Table 6 at its scale: seconds per student iteration and peak memory per label source.

    python benchmarks/paper_scale.py                      # this machine: CPU at a reduced batch, or a GPU as is
    python benchmarks/paper_scale.py --batch 100 --iters 30 --precision fp32,bf16

The ImageNet-1K-shaped setting of HeLlO's Table 6 on generated data: 1,000 classes, 224 px images (one
generated uint8 image per class, the distilled set the views are drawn from), a ResNet-18 student, and per
label source:

* ``hard``: one-hot labels, no labeller (the floor: the student's own step);
* ``teacher``: a ResNet-18 teacher labelling every view online (RDED / SRe2L's setting);
* ``projector``: hellodd's projector on the paper's base, CLIP RN50's image tower (open_clip, seeded random
  weights; weights do not change the cost) with LoRA rank 8 on the encoder and 128 on the head, merged for
  inference (:func:`clip_projector`).

Each iteration is the evaluation's own step (:func:`hellodd.evaluate.student_step`: the views rendered from
the set with random-resized crops, flips and CutMix, the source's targets, the student's forward, backward and
AdamW step).  Timing: the sources interleaved round-robin in one process, so machine load hits them alike;
the median of ``--iters`` iterations after ``--warmup``.  Memory: each (source, precision) again in a fresh
process, which builds only that source's models: CUDA max allocated on a GPU, peak RSS on a CPU.
Prints what it measured, with the ratio projector / teacher per precision; asserts nothing.

The paper (RTX A5000, batch 100): 0.21 s (HeLlO) vs 0.12 s (RDED) per iteration, 4,004 vs 4,538 MiB.  FLOPs
bound the ratio at about (5.4 + 4.1) / (5.4 + 1.8) = 1.3x per image: ResNet-18 forward and backward 5.4
GFLOP, CLIP RN50's forward about 4.1, ResNet-18's 1.8.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

SOURCES = ("hard", "teacher", "projector")
CLASSES = 1000


def clip_projector(pcfg, classes: list[str]):
    """hellodd's projector on CLIP RN50's image tower, built by :func:`hellodd.projector.build_base` as a run
    builds it (seeded random weights), with a seeded random head in place of the text-embedding head:
    building that from a random text tower costs minutes on a CPU and changes no cost per label."""
    from hellodd.projector import build_base

    proj = build_base(pcfg, classes, text_head=False)
    with torch.no_grad():
        proj.head.weight.copy_(torch.nn.functional.normalize(torch.randn(proj.head.weight.shape), dim=-1))
    return proj


def _setting(device: str, precision: str, wanted: list[str]):
    """The config, Fabric, the generated set and the ``wanted`` label sources, built as hellodd builds them
    (only those, so a process measuring one source holds only its models)."""
    from dataclasses import replace

    from lightning_fabric import Fabric

    from hellodd import config as C
    from hellodd.labels import HardLabels, ModelLabels
    from hellodd.models import build_model
    from hellodd.projector import merged_for_inference
    from hellodd.projector.adapters import add_adapters

    cfg = C.preset("imagenet-1k")
    cfg = replace(cfg, projector=replace(cfg.projector, random_init=True))
    fabric = Fabric(
        accelerator=device, devices=1, precision="bf16-mixed" if precision == "bf16" else "32-true"
    )
    torch.manual_seed(0)
    images = torch.randint(0, 256, (CLASSES, 3, 224, 224), dtype=torch.uint8)  # one image per class
    labels = torch.arange(CLASSES)
    classes = [f"class {c}" for c in range(CLASSES)]
    sources = {"hard": HardLabels(CLASSES)}
    if "teacher" in wanted:
        teacher = build_model("resnet18", CLASSES, 3, 224).eval().requires_grad_(False)
        sources["teacher"] = ModelLabels("teacher", fabric.to_device(teacher))
    if "projector" in wanted:
        proj = clip_projector(cfg.projector, classes)
        add_adapters(proj, cfg.projector.encoder_rank, cfg.projector.head_rank)
        sources["projector"] = ModelLabels("projector", fabric.to_device(merged_for_inference(proj)))
    return cfg, fabric, images, labels, sources, build_model


def measure(device: str, precision: str, batch: int, iters: int, warmup: int, sources: list[str]) -> dict:
    from hellodd.augment import Stream
    from hellodd.records import peak_memory_mib
    from hellodd.students import student_optimizer, student_step

    cfg, fabric, images, labels, built, build_model = _setting(device, precision, sources)
    stream = Stream(len(images), 224, batch, 0, min_scale=cfg.evaluate.crop_min_scale)
    steps = {}
    for s in sources:
        torch.manual_seed(0)
        student = build_model("resnet18", CLASSES, 3, 224)
        steps[s] = fabric.setup(student, student_optimizer(student, 1e-3, 0.01))
    if fabric.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(fabric.device)
    times = {s: [] for s in sources}
    for it in range(warmup + iters):
        for s in sources:
            model, opt = steps[s]
            t0 = time.perf_counter()
            student_step(cfg, fabric, model, opt, built[s], stream, images, labels, it, 0)
            if it >= warmup:
                times[s].append(time.perf_counter() - t0)
    return {
        s: {"seconds_per_iteration": statistics.median(t), "peak_memory_mib": peak_memory_mib(fabric.device)}
        for s, t in times.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, help="student batch (default: 100 on a GPU, 8 on a CPU)")
    ap.add_argument("--iters", type=int, help="timed iterations (default: 30 on a GPU, 5 on a CPU)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--precision", default="fp32,bf16")
    ap.add_argument("--only", help=argparse.SUPPRESS)
    args = ap.parse_args()
    gpu = args.device == "cuda"
    batch = args.batch or (100 if gpu else 8)
    iters = args.iters or (30 if gpu else 5)
    if args.only:  # one (source, precision) in a fresh process: its own peak memory
        source, precision = args.only.split(":")
        r = measure(args.device, precision, batch, 2, 1, [source])
        print(json.dumps(r[source]))
        return
    name = torch.cuda.get_device_name() if gpu else "CPU"
    print(
        f"ImageNet-1K shape: {CLASSES} classes, 224 px, ResNet-18 student; device {name}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; batch {batch}, "
        f"median of {iters} iterations after {args.warmup}"
    )
    print(f"{'precision':<9} {'source':<10} {'s/iter':>8} {'peak MiB (own process)':>23}")
    for precision in args.precision.split(","):
        shared = measure(args.device, precision, batch, iters, args.warmup, list(SOURCES))
        for s in SOURCES:
            cmd = [sys.executable, __file__, "--device", args.device, "--batch", str(batch)]
            cmd += ["--only", f"{s}:{precision}"]
            own = json.loads(
                subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1]
            )
            print(
                f"{precision:<9} {s:<10} {shared[s]['seconds_per_iteration']:>8.3f} "
                f"{own['peak_memory_mib']:>23,.0f}"
            )
        ratio = shared["projector"]["seconds_per_iteration"] / shared["teacher"]["seconds_per_iteration"]
        print(f"{precision:<9} projector / teacher time per iteration: {ratio:.2f}x")


if __name__ == "__main__":
    main()
