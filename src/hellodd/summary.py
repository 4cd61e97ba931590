"""The closing table of ``hellodd run``: one line per stage, from the metrics each stage returned."""

from __future__ import annotations

from hellodd.config import Config


def summarise(cfg: Config, results: dict) -> str:
    lines = [f"hellodd results ({cfg.preset}, outputs in {cfg.out})"]
    t = results.get("teachers")
    if t:
        accs = ", ".join(f"{p['epoch']:g}:{p['top1']:.1f}" for p in t["pool"])
        lines.append(
            f"teachers  {t['arch']}: final val top-1 {t['final_val_top1']:.2f}% in {t['seconds']:.0f} s; pool (epoch:top-1) {accs}"
        )
    for stage in ("projector", "distill", "evaluate"):
        r = results.get(stage)
        if r and r.get("summary"):
            lines.append(r["summary"])
    ev = results.get("evaluate")
    if ev and ev.get("table"):
        lines += ["", ev["table"]]
    return "\n".join(lines)
