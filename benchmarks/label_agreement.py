"""Where do the projector's labels differ from the teachers'?  Measured on the views students actually see.

    python benchmarks/label_agreement.py --out runs/fashion-mnist [--adapters FILE] [--batches 10]

On a finished run's distilled set, draws ``--batches`` student batches from the evaluation stream (crops and
flips, with and without CutMix) and compares, pairwise, the logits of: the observer (final teacher, ``T``),
the weak-teacher ensemble the projector was trained to mimic (``W``), the projector (``P``, adapters merged),
and, as a yardstick for how far two ConvNet checkpoints of one run differ, the earliest weak teacher alone
(``W0``).  Prints top-1 agreement, mean KL and mean squared logit difference (what the student's MSE loss
sees).  Prints what it measured; asserts nothing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def logits_on_views(out: str, adapters: str | None, batches: int, preset: str) -> dict[str, dict]:
    from hellodd import config as C
    from hellodd.augment import Stream, render
    from hellodd.layout import distilled_dir
    from hellodd.models import load_classifier
    from hellodd.projector import load_projector, merged_for_inference
    from hellodd.projector.transfer import weak_teachers
    from hellodd.sets import projector_for, read_set
    from hellodd.teachers import load_pool

    cfg = C.apply_overrides(C.preset(preset), [f"out={out}"])
    images, _, _ = read_set(distilled_dir(cfg))
    pool = load_pool(cfg)
    path = Path(adapters) if adapters else projector_for(cfg)
    models = {
        "T": load_classifier(pool["final_path"])[0].eval(),
        "P": merged_for_inference(load_projector(path, "cpu", Path(cfg.out) / "cache")),
    }
    weak = [load_classifier(t["path"])[0].eval() for t in weak_teachers(pool, cfg)]
    ev, res = cfg.evaluate, {}
    for alpha in (0.0, ev.cutmix_alpha):
        stream = Stream(len(images), images.shape[-1], ev.batch_size, 0, 0, 1, ev.crop_min_scale, alpha)
        z = {k: [] for k in ("T", "W", "W0", "P")}
        with torch.inference_mode():
            for e in range(batches):
                idx, crops, mix = stream.batch_params(e, 0)
                x = render(images, idx, crops, mix, torch.device("cpu"))
                w = [f(x) for f in weak]
                z["T"].append(models["T"](x))
                z["W"].append(torch.stack(w).mean(0))
                z["W0"].append(w[0])
                z["P"].append(models["P"](x))
        res[f"cutmix alpha {alpha:g}"] = {k: torch.cat(v).float() for k, v in z.items()}
    return res


def main(argv=None) -> None:
    from hellodd.projector.transfer import agreement

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, help="a finished run's output folder")
    ap.add_argument(
        "--adapters",
        default=None,
        help="another adapter file (default: the one that labels the distilled set)",
    )
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--preset", default="fashion-mnist")
    args = ap.parse_args(argv)
    for views, z in logits_on_views(args.out, args.adapters, args.batches, args.preset).items():
        for a, b in (("T", "W"), ("W", "W0"), ("W", "P"), ("T", "P")):
            m = agreement(z[a], z[b])
            print(
                f"{views:14s} {a:>2s} vs {b:<2s}: top-1 agreement {m['top1_agreement']:5.1f}%  "
                f"KL {m['kl']:.3f}  logit MSE {m['logit_mse']:.3f}  ({len(z[a])} views)"
            )


if __name__ == "__main__":
    main()
