"""``hellodd run``: every stage in order, the random-subset baseline beside the distilled set, then the report.

1. teachers, 2. projector, 3. distill (the configured set), 4. distill a random real subset of the same IPC
(``distill.init=random``, no image update; the view adaptation as configured, so its projector is fitted to
its own views exactly as the set's is), 5. evaluate both (the set with ``evaluate.label_sources``, the subset
with ``evaluate.baseline_sources``: same seeds, streams and protocol), 6. ``hellodd report`` on the run.
An empty ``evaluate.baseline_sources`` skips steps 4 and the subset's evaluation.
"""

from __future__ import annotations

import copy
from pathlib import Path

from hellodd.config import Config


def baseline_config(cfg: Config) -> Config | None:
    """The random real subset of the same IPC, evaluated with ``evaluate.baseline_sources``; None if off."""
    if not cfg.evaluate.baseline_sources or cfg.distill.init == "random":
        return None
    base = copy.deepcopy(cfg)
    base.distill.init, base.distill.update = "random", False
    base.evaluate.label_sources = list(cfg.evaluate.baseline_sources)
    return base


def run_all(cfg: Config, fabric) -> dict:
    from hellodd.distill import run_distill
    from hellodd.evaluate import run_evaluate
    from hellodd.projector import run_projector
    from hellodd.summary import announce
    from hellodd.teachers import train_teachers

    base = baseline_config(cfg)
    steps = [
        ("teachers", cfg, train_teachers),
        ("projector", cfg, run_projector),
        ("distill", cfg, run_distill),
        ("distill (random subset)", base, run_distill),
        ("evaluate", cfg, run_evaluate),
        ("evaluate (random subset)", base, run_evaluate),
    ]
    results = {}
    for name, c, stage in steps:
        if c is not None:
            results[name] = stage(c, fabric)
            announce(c, fabric, name, results[name])  # each stage says what it did as it ends
    if fabric.is_global_zero:
        from hellodd.frontier import write_report

        results["report"] = write_report([Path(cfg.out)], Path(cfg.out))
    fabric.barrier()
    return results
