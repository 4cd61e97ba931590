"""DD-Ranking's label-robust score (LRS), from a run's own numbers.

DD-Ranking (``ddranking`` on PyPI, ``ddranking/metrics/soft_label.py``) scores a distilled set by two gaps:

* HLR, hard-label recovery: ``acc(whole data, hard labels) - acc(set, hard labels)``: how far the set's
  images alone are from all the data (smaller is better);
* IOR, improvement over random: ``acc(set, the method's labels) - acc(random subset of the same size, the
  same labels and protocol)``: what the selection earns under those labels (larger is better);

and combines them as ``alpha = w * IOR - (1 - w) * HLR`` with ``w = 0.5`` and
``LRS = (e^alpha - e^-1) / (e - e^-1)``, which maps alpha in [-1, 1] onto [0, 1].  hellodd feeds the gaps as
**fractions** (0.05 for five points), the scale the formula's documented range assumes; DD-Ranking's code
feeds percentage points, which saturates the score (``lrs_of(..., percent=True)`` gives that reading).

hellodd's reference for "whole data, hard labels" is the final teacher's validation accuracy: the teacher is
trained on every training image with hard labels, with the students' architecture where the preset uses it
(the report names the architecture, so a mismatch is visible).  Accuracies are final-epoch means over seeds.
"""

from __future__ import annotations

import math


def lrs_of(
    whole_hard: float,
    set_hard: float,
    set_acc: float,
    random_acc: float,
    w: float = 0.5,
    percent: bool = False,
) -> dict:
    """HLR, IOR (in points, as given) and LRS from accuracies in percent."""
    hlr, ior = whole_hard - set_hard, set_acc - random_acc
    scale = 1.0 if percent else 0.01
    alpha = w * ior * scale - (1 - w) * hlr * scale
    lrs = (math.exp(alpha) - math.exp(-1)) / (math.e - math.exp(-1))
    return {"hlr": hlr, "ior": ior, "alpha": alpha, "lrs": lrs}


def lrs_rows(entries: list[dict], whole: dict) -> list[dict]:
    """One row per (run, IPC, source, student) of the distilled set that has a random-subset twin and a hard-label
    row: its HLR, IOR and LRS."""
    rows = []
    for e in entries:
        ref = whole.get(e["run"], {}).get("score")
        if e["random"] or "vs_random" not in e or ref is None:
            continue
        hard = [
            h
            for h in entries
            if not h["random"]
            and h["source"] == "hard"
            and (h["run"], h["ipc"], h["student"]) == (e["run"], e["ipc"], e["student"])
        ]
        if not hard:
            continue
        random_acc = e["mean"] - e["vs_random"]
        rows.append(
            {
                **{k: e[k] for k in ("run", "ipc", "source", "student")},
                **lrs_of(ref, hard[0]["mean"], e["mean"], random_acc),
            }
        )
    return rows


def lrs_table(rows: list[dict], whole: dict) -> str:
    """The LRS section of a report (empty when no source has its random-subset twin)."""
    if not rows:
        return ""
    refs = "; ".join(
        f"{run}: {w['arch']} {w['score']:.2f}%" for run, w in whole.items() if w.get("score") is not None
    )
    lines = [
        "DD-Ranking's label-robust score (gaps as fractions; whole-data hard-label reference: the final teacher, "
        f"{refs}):",
        "",
        "| label source | student | HLR (points) | IOR (points) | LRS |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['source']} | {r['student']} | {r['hlr']:.2f} | {r['ior']:+.2f} | {r['lrs']:.4f} |"
        )
    return "\n".join(lines)
