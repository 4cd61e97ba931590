"""Where a run's time went: every stage, and inside each evaluation every part of its student runs.

    python benchmarks/profile_run.py runs/fashion-mnist          # a finished (or partly finished) run folder

Reads what the stages recorded (each stage folder's ``metrics.json``; the student runs' ``parts_seconds``,
:class:`hellodd.students.PartClock`) and prints three markdown tables: seconds per stage, the evaluation's
seconds per part, and per label source the mean run, its median step and its labelling share.  It measures
nothing itself; start-up, data loading and the report are the difference between a command's wall-clock
and the stages' sum.  Runs finished by an earlier command carry their own parts; rows from before the part
clock existed count in their stage's total only.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

PARTS = ("views", "labels", "step", "checkpoints", "validation")


def _read(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def stages(run: Path) -> list[tuple[str, float, str]]:
    """(stage, seconds, what is inside) in pipeline order."""
    out = []
    t = _read(run / "teachers" / "metrics.json")
    if t:
        out.append(("teachers", t["seconds"], f"{t['steps']} steps"))
    for m in sorted((run / "projector").glob("*/metrics.json")):
        p = _read(m)
        out.append(
            (f"projector ({m.parent.name})", p["seconds"], f"{p['steps']} steps at {p['image_size']} px")
        )
    for m in sorted((run / "distill").glob("*/metrics.json"), key=lambda p: "random" in p.parent.name):
        d = _read(m)
        inside = [f"selection {d.get('init_seconds', 0):.0f} s"]
        if d.get("update_seconds"):
            inside.append(f"image update {d['update_seconds']:.0f} s")
        if d.get("adapt"):
            a = d["adapt"]
            inside.append(
                f"view adaptation {a['seconds']:.0f} s ({a['steps']} steps of {a['views_per_step']})"
            )
        out.append((f"distill {m.parent.name}", d["seconds"], ", ".join(inside)))
    for m in sorted((run / "evaluate").glob("*/metrics.json"), key=lambda p: "random" in p.parent.name):
        e = _read(m)
        out.append((f"evaluate {m.parent.name}", e["seconds"], f"{len(e['rows'])} student runs"))
    return out


def evaluation_parts(run: Path) -> tuple[dict, dict]:
    """Seconds per part over every evaluation of the run, and per (set, source) its rows."""
    total, by_source = {}, {}
    for m in sorted((run / "evaluate").glob("*/metrics.json")):
        e = _read(m)
        built = e.get("profile", {}).get("total", {}).get("label_sources_built")
        if built is not None:
            total["label sources built (stored labels written)"] = (
                total.get("label sources built (stored labels written)", 0.0) + built
            )
        for r in e["rows"]:
            for part, sec in r.get("parts_seconds", {}).items():
                total[part] = total.get(part, 0.0) + sec
            by_source.setdefault((m.parent.name, r["source"]), []).append(r)
        total["evaluation stages"] = total.get("evaluation stages", 0.0) + e["seconds"]
    return total, by_source


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run", type=Path)
    run = ap.parse_args().run
    rows = stages(run)
    print(f"Stages of {run} (each stage's own clock):\n")
    print("| stage | seconds | inside |\n|---|---|---|")
    for name, sec, inside in rows:
        print(f"| {name} | {sec:.0f} | {inside} |")
    print(f"| sum of the stages | {sum(s for _, s, _ in rows):.0f} | |")

    total, by_source = evaluation_parts(run)
    if not by_source:
        return
    stage_total = total.pop("evaluation stages")
    first = total.pop("first_iterations_extra", 0.0)
    print(
        "\nThe evaluations by part (summed over every student run; the first iterations' extra time, mostly"
    )
    print("compilation, is inside views, labels and step):\n")
    print("| part | seconds | share |\n|---|---|---|")
    for part in ("label sources built (stored labels written)", *PARTS):
        if part in total:
            print(f"| {part} | {total[part]:.0f} | {100 * total[part] / stage_total:.0f}% |")
    print(
        f"| of which the first iterations' extra (compilation) | {first:.0f} | {100 * first / stage_total:.0f}% |"
    )
    rest = stage_total - sum(total.values())
    print(f"| the rest (start-up, bookkeeping) | {rest:.0f} | {100 * rest / stage_total:.0f}% |")
    print(f"| the evaluation stages | {stage_total:.0f} | 100% |")

    print("\nPer label source (mean over its runs; s/iter: the median step after 5 warm-up steps):\n")
    print(
        "| set | source | runs | seconds per run | s / iter | labels per run (s) | first-iterations extra (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for (name, source), rs in by_source.items():
        parts = [r.get("parts_seconds", {}) for r in rs]
        labels = statistics.mean(p.get("labels", 0.0) for p in parts)
        extra = sum(p.get("first_iterations_extra", 0.0) for p in parts)
        print(
            f"| {name} | {source} | {len(rs)} | {statistics.mean(r['seconds'] for r in rs):.1f} | "
            f"{statistics.median(r['seconds_per_iteration'] for r in rs):.4f} | {labels:.1f} | {extra:.1f} |"
        )


if __name__ == "__main__":
    main()
