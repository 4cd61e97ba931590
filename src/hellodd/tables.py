"""Result rows of student runs, aggregated per (label source, student): what evaluate and report both show."""

from __future__ import annotations

import statistics

from hellodd.config import named, scored_by
from hellodd.errors import UserError


def _score(r: dict, which: str) -> float:
    """The row's ``which`` score (``score``: its task's headline metric, ``second``: the one beside it), under
    the neutral key or the metric's own (rows written before the neutral keys); a row without it is refused,
    never read as 0."""
    task = scored_by(r)
    value = task.read(r, which)
    if value is None:
        name = task.metric_name if which == "score" else task.second_name
        raise UserError(
            f"result row of source {r.get('source')!r}, student {r.get('student')!r}, seed {r.get('seed')!r} "
            f"has no {name} score; evaluate that source again (hellodd evaluate)"
        )
    return value


def aggregate(rows: list[dict], storage: dict) -> list[dict]:
    """One entry per (source, student), in the rows' order: the final-epoch score (the task's metric: top-1,
    mIoU) mean, std and n over seeds, the mean second score (top-5, pixel accuracy), their names, median
    seconds per iteration, peak memory, and the source's label bytes (``storage``)."""
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["source"], r["student"]), []).append(r)
    out = []
    for (source, student), rs in groups.items():
        scores, task = [_score(r, "score") for r in rs], scored_by(rs[0])
        out.append(
            {
                "source": source,
                "student": student,
                "score_name": task.metric_name,
                "mean": statistics.mean(scores),
                "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                "n": len(scores),
                "second_name": task.second_name,
                "second": statistics.mean(_score(r, "second") for r in rs),
                "s_per_iter": statistics.median(r["seconds_per_iteration"] for r in rs),
                "peak_mib": max(r["peak_memory_mib"] for r in rs),
                "bytes": storage[source]["bytes"],
            }
        )
    return out


def results_table(rows: list[dict], storage: dict) -> str:
    """The markdown table of an evaluation (``results.md``): the task's score and the one beside it."""
    task = scored_by(rows[0]) if rows else named(None)
    first, second = task.metric_name, task.second_name
    lines = [
        f"| label source | student | {first} (mean ± std) | {second} | s / iteration | peak memory (MiB) | extra storage (bytes) |",
        "|---|---|---|---|---|---|---|",
    ]
    for a in aggregate(rows, storage):
        lines.append(
            f"| {a['source']} | {a['student']} | {a['mean']:.2f} ± {a['std']:.2f} (n={a['n']}) | {a['second']:.2f} | "
            f"{a['s_per_iter']:.4f} | {a['peak_mib']:.0f} | {a['bytes']:,} ({a['bytes'] / 2**20:.3f} MiB) |"
        )
    return "\n".join(lines)
