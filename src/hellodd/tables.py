"""Result rows of student runs, aggregated per (label source, student): what evaluate and report both show."""

from __future__ import annotations

import statistics

from hellodd.errors import UserError

# each task's headline metric and the one shown beside it (a row holds both: Task.row_scores)
SECOND = {"top1": "top5", "miou": "pixel_accuracy"}


def _score(r: dict, key: str) -> float:
    """The row's ``key`` score; a row without it is refused, never read as 0."""
    if key not in r:
        raise UserError(
            f"result row of source {r.get('source')!r}, student {r.get('student')!r}, seed {r.get('seed')!r} "
            f"has no {key!r} score; evaluate that source again (hellodd evaluate)"
        )
    return r[key]


def aggregate(rows: list[dict], storage: dict) -> list[dict]:
    """One entry per (source, student), in the rows' order: final-epoch top-1 mean, std and n over seeds,
    mean top-5, median seconds per iteration, peak memory, and the source's label bytes (``storage``)."""
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["source"], r["student"]), []).append(r)
    out = []
    for (source, student), rs in groups.items():
        top1 = [_score(r, r.get("metric", "top1")) for r in rs]  # the task's headline metric (top-1, mIoU)
        out.append(
            {
                "source": source,
                "student": student,
                "mean": statistics.mean(top1),
                "std": statistics.stdev(top1) if len(top1) > 1 else 0.0,
                "n": len(top1),
                "top5": statistics.mean(_score(r, SECOND.get(r.get("metric", "top1"), "top5")) for r in rs),
                "s_per_iter": statistics.median(r["seconds_per_iteration"] for r in rs),
                "peak_mib": max(r["peak_memory_mib"] for r in rs),
                "bytes": storage[source]["bytes"],
            }
        )
    return out


def results_table(rows: list[dict], storage: dict) -> str:
    """The markdown table of an evaluation (``results.md``); segmentation: mIoU and pixel accuracy."""
    dense = bool(rows) and rows[0].get("metric") == "miou"
    first, second = ("mIoU", "pixel accuracy") if dense else ("top-1", "top-5")
    lines = [
        f"| label source | student | {first} (mean ± std) | {second} | s / iteration | peak memory (MiB) | extra storage (bytes) |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in aggregate(rows, storage):
        lines.append(
            f"| {a['source']} | {a['student']} | {a['mean']:.2f} ± {a['std']:.2f} (n={a['n']}) | {a['top5']:.2f} | "
            f"{a['s_per_iter']:.4f} | {a['peak_mib']:.0f} | {a['bytes']:,} ({a['bytes'] / 2**20:.3f} MiB) |"
        )
    return "\n".join(lines)
