"""How close the demo's student steps come to this CPU's peak, and the projector's cost against its FLOP bound.

    python benchmarks/cpu_peak.py [--run runs/fashion-mnist] [--precision 32-true|bf16-mixed|auto]

Prints, and asserts nothing:

* the CPU's theoretical peak in the chosen precision: cores x clock x FLOPs per cycle per core, from
  /proc/cpuinfo's flags (two FMA pipes per core, each as wide as the widest vector unit: 8 fp32 lanes with
  AVX2, 16 with AVX-512; bf16 dot products twice that with AVX512-BF16; AMX tiles 1,024 bf16 FLOPs per
  cycle) and the clock torch's threads run at as /proc/cpuinfo reports it;
* what a large matrix product reaches here in that precision (an attainable peak: what dense kernels get);
* the demo student's step (ConvNet-D3, the preset's batch and resolution, forward + backward + AdamW, the
  preset's compile setting): FLOPs counted by ``torch.utils.flop_counter``, seconds measured here (median of
  interleaved repeats), the fraction of both peaks;
* the labellers' forward FLOPs (teacher, projector) and the FLOP bound of a projector-labelled iteration
  against a teacher-labelled one, beside the ratio a run measured (``--run``: its report's s / iter).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch


def cpu_peak(precision: str) -> tuple[float, str]:
    """(FLOP/s, how it was computed) for this machine's cores in ``precision``."""
    text = Path("/proc/cpuinfo").read_text()
    flags = set(next(line for line in text.splitlines() if line.startswith("flags")).split(":")[1].split())
    mhz = [float(line.split(":")[1]) for line in text.splitlines() if line.startswith("cpu MHz")]
    cores = torch.get_num_threads()
    ghz = statistics.median(mhz) / 1000
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    per_cycle = 2 * lanes * 2  # two FMA pipes, lanes wide, 2 FLOPs per FMA
    how = f"{cores} cores x {ghz:.2f} GHz x 2 FMA pipes x {lanes} fp32 lanes x 2"
    if precision == "bf16-mixed":
        if "amx_bf16" in flags:
            per_cycle, how = 1024, f"{cores} cores x {ghz:.2f} GHz x 1,024 (AMX bf16)"
        elif "avx512_bf16" in flags:
            per_cycle, how = per_cycle * 2, how + " x 2 (AVX512-BF16 dot products)"
        else:
            how += " (bf16 emulated: the fp32 peak is an upper bound)"
    return cores * ghz * 1e9 * per_cycle, how


def timed(fn, repeats: int, warm: int = 3) -> float:
    for _ in range(warm):
        fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_rate(dtype: torch.dtype, n: int = 2048) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, 5)


def count(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", help="a finished demo run folder: its report's s / iter beside the bound")
    ap.add_argument("--precision", default="auto")
    ap.add_argument("--repeats", type=int, default=30)
    args = ap.parse_args()

    from hellodd import config as C
    from hellodd.data import class_names
    from hellodd.engine import make_fabric
    from hellodd.models import build_model
    from hellodd.precision import choose
    from hellodd.projector.adapters import add_adapters, merged_for_inference
    from hellodd.projector.bases import build_base

    cfg = C.preset("fashion-mnist")
    chosen = choose(args.precision, "cpu")
    cfg.engine.precision, cfg.engine.accelerator = chosen.precision, "cpu"
    fabric = make_fabric(cfg.engine)
    peak, how = cpu_peak(chosen.precision)
    dtype = torch.bfloat16 if chosen.precision == "bf16-mixed" else torch.float32
    dense = matmul_rate(dtype)
    print(f"precision {chosen.precision} ({chosen.why})")
    print(f"peak: {peak / 1e9:.1f} GFLOP/s = {how}")
    print(f"a 2048^3 {dtype} matrix product reaches {dense / 1e9:.1f} GFLOP/s ({dense / peak:.0%} of peak)")

    ev, size, batch = cfg.evaluate, cfg.data.image_size, cfg.evaluate.batch_size
    torch.manual_seed(0)
    student = build_model(ev.students[0], 10, 1, size)
    opt = torch.optim.AdamW(student.parameters(), lr=ev.lr, weight_decay=ev.weight_decay)
    model, opt = fabric.setup(torch.compile(student) if ev.compile else student, opt)
    x, y = torch.rand(batch, 1, size, size), torch.randn(batch, 10).softmax(1)

    def step():
        with fabric.autocast():
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        fabric.backward(loss)
        opt.step()

    step()  # compiles
    flops = count(lambda: torch.nn.functional.cross_entropy(student(x), y).backward())
    seconds = timed(step, args.repeats)
    rate = flops / seconds
    print(
        f"student step ({ev.students[0]}, batch {batch}, {size} px, compile={ev.compile}): "
        f"{flops / 1e9:.2f} GFLOP in {seconds * 1e3:.1f} ms = {rate / 1e9:.1f} GFLOP/s, "
        f"{rate / peak:.0%} of peak, {rate / dense:.0%} of the matrix product's rate"
    )

    teacher = build_model(cfg.teacher.arch, 10, 1, size).eval()
    pcfg = cfg.projector
    proj = build_base(pcfg, class_names(cfg.data), Path(args.run or "runs/fashion-mnist") / "cache")
    add_adapters(proj, pcfg.encoder_rank, pcfg.head_rank, pcfg.frozen_depth)
    proj = merged_for_inference(proj).eval()
    with torch.no_grad():
        t_flops, p_flops = count(lambda: teacher(x)), count(lambda: proj(x))
    bound = (flops + p_flops) / (flops + t_flops)
    print(
        f"labellers' forward per batch: teacher {t_flops / 1e9:.2f} GFLOP, projector {p_flops / 1e9:.2f} GFLOP "
        f"at {pcfg.image_size} px; a projector-labelled iteration costs at least {bound:.2f}x a teacher-labelled one"
    )
    if args.run:
        report = json.loads((Path(args.run) / "report.json").read_text())
        s = {
            e["source"]: e["s_per_iter"]
            for e in report["entries"]
            if not e["random"] and e["ipc"] == cfg.distill.ipc
        }
        print(
            f"{args.run}: s / iter hard {s['hard']:.3f}, teacher {s['teacher']:.3f}, projector {s['projector']:.3f}: "
            f"projector / teacher {s['projector'] / s['teacher']:.2f}x measured against the {bound:.2f}x bound; "
            f"the hard-label iteration (the student's step and its views) at "
            f"{flops / s['hard'] / 1e9:.1f} GFLOP/s, {flops / s['hard'] / peak:.0%} of peak"
        )
    print(f"threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")


if __name__ == "__main__":
    main()
