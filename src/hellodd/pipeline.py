"""``hellodd run``: every stage in order, the random-subset baseline beside the distilled set, then the report.

1. teachers, 2. projector, 3. distill (the configured set), 4. distill a random real subset of the same IPC
(``distill.init=random``, no image update; the view adaptation as configured, so its projector is fitted to
its own views exactly as the set's is), 5. evaluate both (the set with ``evaluate.label_sources``, the subset
with ``evaluate.baseline_sources``: same seeds, streams and protocol), 6. ``hellodd report`` on the run.
An empty ``evaluate.baseline_sources`` skips steps 4 and the subset's evaluation.
Each step is the config's task's own stage (:func:`hellodd.tasks.stage_function`): for segmentation, step 3
keeps the observer's subset of whole images and step 4 a random one (:mod:`hellodd.subset`).

``hellodd run --ipc 1 10 50`` runs steps 2-5 once per IPC over one trajectory (step 1 once), each IPC with its
preset settings (weak-teacher window, view-adaptation budget; a projector is trained once per window), and
the report gains a table in the paper's shape (label sources by IPC) and a section per IPC.
"""

from __future__ import annotations

import copy
from pathlib import Path

from hellodd.config import Config
from hellodd.frontier import write_report
from hellodd.layout import projector_path
from hellodd.summary import announce
from hellodd.tasks import stage_function


def baseline_config(cfg: Config) -> Config | None:
    """The random real subset of the same IPC, evaluated with ``evaluate.baseline_sources``; None if off."""
    if not cfg.evaluate.baseline_sources or cfg.distill.init == "random":
        return None
    base = copy.deepcopy(cfg)
    base.distill.init, base.distill.update = "random", False
    base.evaluate.label_sources = list(cfg.evaluate.baseline_sources)
    return base


def run_all(cfg: Config | list[Config], fabric) -> dict:
    """Every stage for one config, or for one config per IPC (same run folder, same trajectory)."""
    cfgs = cfg if isinstance(cfg, list) else [cfg]
    many = len(cfgs) > 1
    steps = [("teachers", cfgs[0], "teachers")]
    projectors = set()  # one transfer per weak-teacher window
    for c in cfgs:
        tag = f" (IPC {c.distill.ipc})" if many else ""
        if projector_path(c) not in projectors:
            projectors.add(projector_path(c))
            steps.append((f"projector{tag}", c, "projector"))
        base = baseline_config(c)
        steps += [
            (f"distill{tag}", c, "distill"),
            (f"distill (random subset){tag}", base, "distill"),
            (f"evaluate{tag}", c, "evaluate"),
            (f"evaluate (random subset){tag}", base, "evaluate"),
        ]
    results = {}
    for name, c, stage in steps:
        if c is not None:
            results[name] = stage_function(c, stage)(c, fabric)  # the task's own stage
            announce(c, fabric, name, results[name])  # each stage says what it did as it ends
    if fabric.is_global_zero:
        ipcs = [c.distill.ipc for c in cfgs]
        results["report"] = write_report([Path(cfgs[0].out)], Path(cfgs[0].out), ipcs=ipcs)
    fabric.barrier()
    return results
