"""Seconds from a scheduler's SIGTERM to the process's exit, per stage of a real run.

    python benchmarks/stop_latency.py --run runs/fashion-mnist [--delays 20 45] [--preset fashion-mnist]

For each stage (teachers, projector, distill, evaluate), a copy of the finished run's earlier stages goes
into a scratch folder, the stage starts there as ``hellodd <stage>``, and ``SIGTERM`` is sent after each
delay (seconds after the start, start-up included); prints the seconds to exit, the exit code and the line
the stage printed.  A stage that had finished before the signal says so.  Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BEFORE = {
    "teachers": [],
    "projector": ["teachers"],
    "distill": ["teachers", "projector"],
    "evaluate": ["teachers", "projector", "distill"],
}


def trial(run: Path, preset: str, stage: str, delay: float) -> str:
    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "run"
        out.mkdir()
        for s in BEFORE[stage]:
            shutil.copytree(run / s, out / s)
        if (run / "cache").is_dir():
            shutil.copytree(run / "cache", out / "cache")
        cmd = [sys.executable, "-m", "hellodd", stage, "--preset", preset, "--out", str(out)]
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        if p.poll() is not None:
            return f"{stage:9s} after {delay:4.0f} s: finished before the signal (exit {p.returncode})"
        sent = time.monotonic()
        p.send_signal(signal.SIGTERM)
        err = p.communicate()[1]
        seconds = time.monotonic() - sent
        said = [line for line in err.splitlines() if line.startswith("hellodd:")]
        return f"{stage:9s} after {delay:4.0f} s: exit {p.returncode} {seconds:5.1f} s after SIGTERM: {said[-1] if said else err[-200:]}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", required=True)
    ap.add_argument("--preset", default="fashion-mnist")
    ap.add_argument("--delays", type=float, nargs="+", default=[20.0, 45.0])
    ap.add_argument("--stages", nargs="+", default=list(BEFORE))
    args = ap.parse_args()
    for stage in args.stages:
        for delay in args.delays:
            print(trial(Path(args.run), args.preset, stage, delay), flush=True)


if __name__ == "__main__":
    main()
