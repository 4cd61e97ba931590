"""``hellodd report RUN...``: the storage-accuracy frontier of one or more runs, as a table and a plot.

Reads what the stages wrote (``<run>/evaluate/<set>/metrics.json``, ``<run>/teachers/metrics.json``) and
writes ``report.md`` and ``frontier.png`` into the chosen folder (the run itself for ``hellodd run``):

* per (set, label source, student): the final-epoch score (the task's metric: top-1, mIoU), mean ± sample
  std over seeds (no best-epoch or learning-rate selection on the test set), the label source's extra bytes
  (from its files), s / iteration;
* the improvement over the random real subset of the same IPC in the same run, per source and student:
  mean(set) - mean(random) ± sqrt(std(set)^2 + std(random)^2) (the subset and the set share seeds, streams
  and protocol, not images, so the runs are not paired);
* the whole-data reference: the final teacher's validation score (trained on every training image);
* the plot: the score against label bytes (log scale; hard labels, 0 B, sit at the left edge), one point per
  source with its std, the distilled set filled and the random subset hollow, for the first student.

Several runs (e.g. adapters saved in fp16, other ranks) go on one frontier; rows then name their run.

Per IPC, the report says in words where the projector's labels stand: above the teacher's, within 1 point,
or below (the paper's claim is "above" at small IPC), and against stored and compressed labels that cost no
more bytes.  Runs with several IPCs (``hellodd run --ipc 1 10 50``) also get the paper's main table: label
sources by IPC, with their bytes, and one section (table, verdict, frontier plot) per IPC.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from hellodd.config import named, scored_by
from hellodd.config.schema import LABEL_SOURCES, is_compressor_source
from hellodd.config.tasks import reference
from hellodd.errors import UserError
from hellodd.io import read_json, write_bytes
from hellodd.layout import (
    CONFIG_FILE,
    REPORT_JSON,
    REPORT_MD,
    evaluations_in,
    frontier_plot,
    teacher_metrics_in,
)
from hellodd.ranking import lrs_rows, lrs_table
from hellodd.tables import aggregate


def _sets(run: Path) -> list[dict]:
    found = evaluations_in(run)
    if not found:
        raise UserError(
            f"{run}: no evaluate/<set>/metrics.json; run 'hellodd evaluate' (or 'hellodd run') first"
        )
    return [read_json(p) for p in found]


def per_source(m: dict) -> list[dict]:
    """An evaluation's rows (``evaluate/<set>/metrics.json``) per (source, student): final-epoch score mean,
    std and n over seeds, label bytes, median seconds per iteration."""
    keep = ("source", "student", "mean", "std", "n", "bytes", "s_per_iter")
    return [{k: a[k] for k in keep} for a in aggregate(m["rows"], m["storage"])]


def collect(runs: list[Path]) -> tuple[list[dict], dict]:
    """One entry per (run, set, source, student) with mean / std / n / bytes, and whole-data references."""
    entries, whole = [], {}
    for run in runs:
        teachers = teacher_metrics_in(run)
        if teachers.is_file():
            t = read_json(teachers)
            task = scored_by(t)  # a teacher's metrics keep its task's own keys
            score = t.get(f"final_val_{task.metric}")
            whole[run.name] = {"arch": t.get("arch"), "score": score, "score_name": task.metric_name}
            said = precision_of(run)
            if said:
                whole[run.name]["precision"] = said
        for m in _sets(run):
            where = {
                "run": run.name,
                "set": m.get("set", Path(m["distilled_set"]).name),
                "random": m.get("set", "").endswith("-random"),
                "ipc": m.get("ipc"),
                "epochs": m.get("epochs"),
                "score_name": scored_by(m).metric_name,  # what the means are: the task's metric
            }
            entries += [{**where, **e} for e in per_source(m)]
    for e in entries:  # improvement over the random subset of the same IPC, same run / source / student
        if e["random"]:
            continue
        ref = [
            r
            for r in entries
            if r["random"]
            and (r["run"], r["ipc"], r["source"], r["student"])
            == (e["run"], e["ipc"], e["source"], e["student"])
        ]
        if ref:
            e["vs_random"] = e["mean"] - ref[0]["mean"]
            e["vs_random_std"] = math.hypot(e["std"], ref[0]["std"])
    return entries, whole


def precision_of(run: Path) -> str:
    """The precision the run's students computed in, and why, from its evaluations' ``config.json`` (empty for
    a run of before the choice was recorded)."""
    said = []
    for metrics in evaluations_in(run):
        where = metrics.parent / CONFIG_FILE
        engine = read_json(where)["config"]["engine"] if where.is_file() else {}
        if engine.get("precision_why"):
            said.append(f"{engine['precision']} ({engine['precision_why']})")
    return "; ".join(dict.fromkeys(said))


def metric_name(entries: list[dict]) -> str:
    """What the entries' means are: their task's metric (top-1, mIoU); ``score`` when runs differ."""
    names = {scored_by(e).metric_name for e in entries} or {named(None).metric_name}
    return names.pop() if len(names) == 1 else "score"


def current(entries: list[dict], whole: dict) -> tuple[list[dict], dict]:
    """A report's entries and whole-data references with their scores under the neutral keys, whichever
    version wrote them (a report.json of before them names the metric's key: ``metric``, ``top1``)."""
    entries = [{**e, "score_name": scored_by(e).metric_name} for e in entries]
    whole = {
        run: {"arch": w.get("arch"), "score": reference(w), "score_name": scored_by(w).metric_name}
        | ({"precision": w["precision"]} if w.get("precision") else {})
        for run, w in whole.items()
    }
    return entries, whole


def table(entries: list[dict], whole: dict) -> str:
    many = len({e["run"] for e in entries}) > 1
    lines = []
    for run, w in whole.items():
        if w.get("score") is not None:
            lines.append(
                f"Whole-data reference ({run}): the final teacher ({w['arch']}, every training image) reaches "
                f"{w['score']:.2f}% val {w['score_name']}."
            )
        if w.get("precision"):
            lines.append(f"Students computed in {w['precision']}.")
    lines.append("")
    head = [
        "set",
        "label source",
        "student",
        f"{metric_name(entries)} (mean ± std, n)",
        "vs random subset",
        "label bytes",
        "s / iter",
    ]
    if many:
        head.insert(0, "run")
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for e in entries:
        vs = f"{e['vs_random']:+.2f} ± {e['vs_random_std']:.2f}" if "vs_random" in e else "-"
        cells = [
            e["set"],
            e["source"],
            e["student"],
            f"{e['mean']:.2f} ({e['n']})" if e["n"] == 1 else f"{e['mean']:.2f} ± {e['std']:.2f} ({e['n']})",
            vs,
            f"{e['bytes']:,}",
            f"{e['s_per_iter']:.3f}",
        ]
        if many:
            cells.insert(0, e["run"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(entries: list[dict], whole: dict, path: Path) -> None:
    import matplotlib  # lazy: a heavy import, needed only to draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    student = entries[0]["student"]
    pts = sorted((e for e in entries if e["student"] == student), key=lambda e: e["random"])  # sets first
    positive = [e["bytes"] for e in pts if e["bytes"] > 0]
    floor = 10 ** math.floor(math.log10(min(positive) / 10)) if positive else 1.0
    sources = sorted({e["source"] for e in pts})
    palette = "tab10" if len(sources) <= 10 else "tab20"  # a compressor sweep: no two sources share a colour
    colours = {s: plt.get_cmap(palette)(i % 20) for i, s in enumerate(sources)}
    many = len({e["run"] for e in pts}) > 1
    fig, ax = plt.subplots(figsize=(8, 5.5))
    seen = set()
    for e in pts:
        x = e["bytes"] if e["bytes"] > 0 else floor
        c = colours[e["source"]]
        ax.errorbar(
            x,
            e["mean"],
            yerr=e["std"],
            fmt="s" if e["random"] else "o",
            color=c,
            mfc="white" if e["random"] else c,
            ms=7,
            capsize=3,
            label=None if e["source"] in seen else e["source"],
        )
        seen.add(e["source"])
        if many:  # several runs on one frontier: name each point's run
            ax.annotate(
                e["run"], (x, e["mean"]), textcoords="offset points", xytext=(6, 3), fontsize=6, color=c
            )
    for w in whole.values():
        if w.get("score") is not None:
            ax.axhline(w["score"], ls="--", color="grey", lw=1)
            ax.annotate(
                f"whole data ({w['arch']})",
                (floor, w["score"]),
                xytext=(2, 3),
                textcoords="offset points",
                fontsize=7,
                color="grey",
            )
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(
        plt.FuncFormatter(
            lambda v, _: "0 B" if math.isclose(v, floor) else f"$10^{{{round(math.log10(v))}}}$"
        )
    )
    ax.set_xlabel("extra label bytes (log scale; hard labels need none)")
    ax.set_ylabel(f"student {metric_name(pts)} (%), final epoch, mean ± std over seeds")
    ipc, epochs = pts[0].get("ipc"), pts[0].get("epochs")
    what = f"IPC {ipc}" if scored_by(pts[0]).counts_per_class else pts[0]["set"]  # else a subset's size
    ax.set_title(
        f"{what}, {student}, {epochs} epochs: filled = distilled set, hollow = random real subset", fontsize=9
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(title="label source", fontsize=8, title_fontsize=8, loc="best")
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    write_bytes(path, buf.getvalue())


def _pm(e: dict) -> str:
    """An entry's mean ± std; a single seed has no std, so its mean stands alone."""
    return f"{e['mean']:.2f} ± {e['std']:.2f}" if e["n"] > 1 else f"{e['mean']:.2f} (one seed)"


def _mean(entries: list[dict], source: str) -> dict | None:
    found = [e for e in entries if e["source"] == source and not e["random"]]
    return found[0] if found else None


def verdict(entries: list[dict]) -> list[str]:
    """Where the projector's labels stand on one IPC's distilled set (first student), in words."""
    student = entries[0]["student"]
    mine = [e for e in entries if e["student"] == student]
    proj, lines = _mean(mine, "projector"), []
    if proj is None:
        return lines
    teacher = _mean(mine, "teacher")
    if teacher is not None:
        gap = proj["mean"] - teacher["mean"]
        where = (
            "ABOVE the teacher's (the paper's claim at IPC 1 and 10)"
            if gap > 1
            else "within 1 point of the teacher's"
            if gap >= -1
            else "BELOW the teacher's by more than a point"
        )
        lines.append(
            f"- Projector labels {_pm(proj)} against the online teacher's {_pm(teacher)} ({gap:+.2f}): {where}."
        )
    compressed = sorted(
        {e["source"] for e in mine if is_compressor_source(e["source"])},
        key=lambda n: (n.partition(":")[0], _ratio(n)),
    )
    heavier, beaten = 0, 0
    for name in ("stored", "compressed", *compressed):
        other = _mean(mine, name)
        if other is None:
            continue
        cheaper = "no more" if other["bytes"] <= proj["bytes"] else "more"
        beats = "beat" if proj["mean"] > other["mean"] else "do not beat"
        if other["bytes"] >= proj["bytes"]:
            heavier += 1
            beaten += proj["mean"] > other["mean"]
        lines.append(
            f"- `{name}` labels cost {other['bytes']:,} B, {cheaper} than the projector's "
            f"{proj['bytes']:,} B, and reach {_pm(other)}: the projector's labels "
            f"{beats} them."
        )
    stored = _mean(mine, "stored")
    if heavier:
        weight = ""
        if stored and stored["bytes"] > proj["bytes"]:
            ratio = stored["bytes"] / proj["bytes"]
            weight = f"; its adapters weigh 1/{ratio:,.0f} of the stored labels" if ratio >= 10 else ""
            weight = weight or f"; its adapters weigh 1/{ratio:.1f} of the stored labels"
        elif stored:
            weight = f"; its adapters weigh {proj['bytes'] / max(stored['bytes'], 1):,.2f}x the stored labels"
        lines.append(
            f"- At equal or larger bytes the projector's labels beat {beaten} of the {heavier} stored-label "
            f"sources that weigh at least its adapters{weight}."
        )
    return lines


def _ratio(name: str) -> float:
    """A compressor's ratio for ordering (``adapters`` after every number)."""
    arg = name.partition(":")[2]
    try:
        return float(arg)
    except ValueError:
        return float("inf")


def ipc_table(entries: list[dict]) -> str:
    """The paper's main table: one row per label source (distilled set, then random subset), one column per
    IPC; each cell the score's mean ± std and the source's label bytes (first student)."""
    student = entries[0]["student"]
    mine = [e for e in entries if e["student"] == student]
    ipcs = sorted({e["ipc"] for e in mine})
    order = list(LABEL_SOURCES)  # the config's order; compressors (lpld:X, ...) after
    sources = sorted(
        {e["source"] for e in mine},
        key=lambda n: (order.index(n.split("+")[0]) if n.split("+")[0] in order else 99, n),
    )
    lines = [
        f"| label source ({student}) | " + " | ".join(f"IPC {i}" for i in ipcs) + " |",
        "|---|" + "---|" * len(ipcs),
    ]
    for random in (False, True):
        for src in sources:
            cells = []
            for i in ipcs:
                e = [x for x in mine if (x["source"], x["ipc"], x["random"]) == (src, i, random)]
                cells.append(f"{e[0]['mean']:.2f} ± {e[0]['std']:.2f} ({e[0]['bytes']:,} B)" if e else "-")
            if any(c != "-" for c in cells):
                name = f"random subset: {src}" if random else src
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(entries: list[dict], whole: dict, plots: dict[int, str] | None = None) -> str:
    """The report's markdown below its title: per IPC the table, the verdict, the LRS table and (``plots``:
    IPC -> image path) the frontier plot; several IPCs open with the label sources by IPC.  Reads a report of
    any version (:func:`current`)."""
    entries, whole = current(entries, whole)
    found = sorted({e["ipc"] for e in entries})
    sections = []
    for ipc in found:
        mine = [e for e in entries if e["ipc"] == ipc]
        said = verdict(mine)
        ranked = lrs_table(lrs_rows(mine, whole), whole)
        sections.append(
            (f"## IPC {ipc}\n\n" if len(found) > 1 else "")
            + table(mine, whole)
            + ("\n\n" + "\n".join(said) if said else "")
            + ("\n\n" + ranked if ranked else "")
            + (f"\n\n![frontier]({plots[ipc]})\n" if plots else "\n")
        )
    md = "\n".join(sections)
    if len(found) > 1:
        md = "## Label sources by IPC\n\n" + ipc_table(entries) + "\n\n" + md
    return md


def write_report(runs: list[Path], to: Path, ipcs: list[int] | None = None) -> dict:
    """Write ``report.md``, ``report.json`` and the frontier plot(s) into ``to``; return what was written.
    ``ipcs``: only the sets of these IPCs (default: every set of the runs)."""
    for run in runs:
        if not run.is_dir():
            raise UserError(f"{run}: no such run folder")
    entries, whole = collect(runs)
    if ipcs:
        entries = [e for e in entries if e["ipc"] in ipcs]
        if not entries:
            raise UserError(f"{runs[0]}: no evaluated set at IPC {', '.join(map(str, ipcs))}")
    found = sorted({e["ipc"] for e in entries})
    to.mkdir(parents=True, exist_ok=True)
    plots = {ipc: frontier_plot(None if len(found) == 1 else ipc) for ipc in found}
    for ipc, name in plots.items():
        plot([e for e in entries if e["ipc"] == ipc], whole, to / name)
    md = markdown(entries, whole, plots)
    write_bytes(to / REPORT_MD, ("# hellodd report\n\n" + md).encode())
    report = {"entries": entries, "whole_data": whole, "lrs": lrs_rows(entries, whole)}
    write_bytes(to / REPORT_JSON, json.dumps(report, indent=2).encode())
    return {
        "table": md,
        "entries": entries,
        "summary": f"report: {(to / REPORT_MD).resolve()} and {', '.join(str((to / p).resolve()) for p in plots.values())}",
    }
