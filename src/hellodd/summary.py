"""What a run tells its operator: one line per stage as it ends (its result and where it wrote it), and the
closing summary of ``hellodd run`` (every stage's line, then the report's table and where the report is)."""

from __future__ import annotations

from pathlib import Path

from hellodd.config import Config, scored_by
from hellodd.layout import RESULTS_MD, distilled_dir, evaluate_dir, projector_path


def stage_line(stage: str, r: dict) -> str:
    """The one-line result of a stage, from the metrics it returned."""
    task = scored_by(r)  # a teacher stage's metrics: its task's score under the task's own key
    metric, name = task.metric, task.metric_name
    if stage == "teachers" and r.get(f"final_val_{metric}") is not None:
        accs = ", ".join(f"{p['epoch']:g}:{p[metric]:.1f}" for p in r["pool"])
        return (
            f"teachers {r['arch']}: final val {name} {r[f'final_val_{metric}']:.2f}% in {r['seconds']:.0f} s; "
            f"pool (epoch:{name}) {accs}"
        )
    return r.get("summary", "")


def stage_folder(cfg: Config, stage: str) -> Path:
    """The folder a stage wrote (absolute, so a log says where to look whatever the working directory)."""
    out = Path(cfg.out).resolve()
    if stage.startswith("projector"):
        return projector_path(cfg).parent.resolve()
    if stage.startswith("distill"):
        return distilled_dir(cfg).resolve()
    if stage.startswith("evaluate"):
        return evaluate_dir(cfg).resolve()
    return out / stage


def announce(cfg: Config, fabric, stage: str, r: dict) -> None:
    """Print a finished stage's result and output folder (rank 0)."""
    if fabric.is_global_zero and r:
        where = stage_folder(cfg, stage)
        extra = f" (table: {where / 'results.md'})" if stage.startswith("evaluate") else ""
        print(f"{stage_line(stage, r)}\n  -> {where}{extra}", flush=True)


def summarise(cfg: Config, results: dict) -> str:
    lines = [f"hellodd results ({cfg.preset}, outputs in {Path(cfg.out).resolve()})"]
    for stage, r in results.items():
        if stage != "report" and r and stage_line(stage, r):
            lines.append(stage_line(stage, r))
    if results.get("report"):
        lines += ["", results["report"]["table"], "", results["report"]["summary"]]
    else:
        for stage, r in results.items():
            if stage.startswith("evaluate") and r.get("table"):
                lines += ["", r["table"], f"(also in {stage_folder(cfg, stage) / RESULTS_MD})"]
    return "\n".join(lines)
