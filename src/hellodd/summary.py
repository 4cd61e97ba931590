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
    for stage, r in results.items():
        if stage != "report" and r and r.get("summary"):
            lines.append(r["summary"])
    if results.get("report"):
        lines += ["", results["report"]["table"], "", results["report"]["summary"]]
    else:
        for stage, r in results.items():
            if stage.startswith("evaluate") and r.get("table"):
                lines += ["", r["table"]]
    return "\n".join(lines)
