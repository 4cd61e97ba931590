"""Choose the projector's transfer settings (weak-teacher window, LoRA rank, depth) on a split no reported
number uses: renderings of the *training* typefaces that training never saw.

    python benchmarks/transfer_selection.py --preset glyphs-1000-glyph-base --out RUN \
        --try 'projector.teacher_epochs=[1.5,2,3]' --try 'projector.teacher_epochs=[4,5,6]' \
        [--set projector.train_per_class=20] [--selection-renderings 1]

RUN holds a finished ``hellodd teachers`` stage of the preset.  Every ``--try`` is one variant (several
overrides joined by ``;``), applied after ``--set``; each variant's transfer is trained exactly as the
projector stage trains it (same function, same training images) into ``RUN/selection/<digest of its overrides>/``, never into
the run's own ``projector/``, and resumes there.  The reported splits (the held-out typefaces) are never
read: the selection split is the glyphs renderer's validation split drawn from the training faces
(``data.glyph_val_faces=train``), different seeded renderings of the faces training uses.

For each variant it prints the projector's top-1 on the selection split before and after LoRA, its top-1
agreement and KL with the weak teachers it copies and with the final teacher, the weak teachers' own
ensemble top-1 and the final teacher's there, the adapter bytes and the transfer's seconds; the variant with
the highest projector top-1 is named.  ``RUN/selection/selection.json`` keeps every figure.  Run it alone.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import hashlib
import json
import time
from pathlib import Path

import torch


@torch.no_grad()
def logits_of(models, ds, batch: int = 500) -> torch.Tensor:
    """The mean logits of ``models`` (one or several) over ``ds``, in order, on the CPU."""
    from hellodd.augment import to_float

    out = []
    for i in range(0, len(ds), batch):
        x = torch.stack([to_float(ds[j][0]) for j in range(i, min(i + batch, len(ds)))])
        out.append(torch.stack([m(x).float() for m in models]).mean(0))
    return torch.cat(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", required=True)
    ap.add_argument("--out", required=True, help="the run folder holding teachers/")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="applied to every variant")
    ap.add_argument("--try", dest="variants", action="append", required=True, help="one variant: a;b;c")
    ap.add_argument(
        "--selection-renderings", type=int, default=1, help="renderings per training face and class"
    )
    args = ap.parse_args()

    from hellodd import config as C
    from hellodd import engine
    from hellodd.precision import choose
    from hellodd.projector.adapters import load_projector
    from hellodd.projector.transfer import ADAPTER_FILE, agreement, train_projector, weak_teachers
    from hellodd.tasks import load_network, task_of
    from hellodd.teachers import load_pool

    cfg = C.apply_overrides(C.preset(args.preset), [f"out={args.out}", *args.overrides])
    if cfg.data.name != "glyphs":
        raise SystemExit(f"--preset {args.preset}: a glyphs preset (the selection split is the renderer's)")
    cfg.engine.precision = choose(cfg.engine.precision, cfg.engine.accelerator).precision
    fabric = engine.make_fabric(cfg.engine)
    pool = load_pool(cfg)
    task = task_of(cfg.data)
    bundle = task.load(cfg.data, cfg.engine.seed)
    held_in = dataclasses.replace(
        cfg.data, glyph_val_faces="train", glyph_val_renderings=args.selection_renderings
    )
    selection = task.load(held_in, cfg.engine.seed).val
    bundle = dataclasses.replace(bundle, val=selection)  # the run's training images, the selection split
    labels = torch.tensor([int(selection[i][1]) for i in range(len(selection))])
    final = load_network(pool["final_path"])[0].eval()
    final_logits = logits_of([final], selection)
    top1 = lambda z: 100.0 * float((z.argmax(1) == labels).float().mean())  # noqa: E731
    root = Path(cfg.out) / "selection"
    print(
        f"{args.preset}: selection split = {len(selection):,} renderings of the {len(bundle.classes)} classes in "
        f"the training faces (never trained on); final teacher top-1 there {top1(final_logits):.2f}%"
    )
    rows = []
    for n, variant in enumerate(args.variants):
        overrides = [o.strip() for o in variant.split(";") if o.strip()]
        vcfg = C.apply_overrides(copy.deepcopy(cfg), overrides)
        teachers = weak_teachers(pool, vcfg, len(bundle.classes))
        weak_logits = logits_of([load_network(t["path"])[0].eval() for t in teachers], selection)
        t0 = time.perf_counter()
        digest = hashlib.sha256(json.dumps([*args.overrides, *overrides]).encode()).hexdigest()[:12]
        out = root / digest  # a variant's own folder: a rerun of the same variant resumes it
        metrics = train_projector(vcfg, fabric, vcfg.projector, out, bundle, teachers)
        proj = load_projector(out / ADAPTER_FILE, checkpoint=vcfg.projector.checkpoint or None).eval()
        proj_logits = logits_of([proj], selection)
        row = {
            "variant": overrides,
            "weak_teachers": [t["epoch"] for t in teachers],
            "weak_top1": top1(weak_logits),
            "zero_shot_top1": metrics["zero_shot_val_top1"],
            "projector_top1": top1(proj_logits),
            "vs_weak": agreement(weak_logits, proj_logits),
            "vs_final": agreement(final_logits, proj_logits),
            "adapter_bytes": (out / ADAPTER_FILE).stat().st_size,
            "transfer_seconds": metrics["seconds"],
            "seconds": time.perf_counter() - t0,
        }
        rows.append(row)
        print(
            f"[{n}] {'; '.join(overrides)}: weak teachers {row['weak_teachers']} top-1 {row['weak_top1']:.2f}% | "
            f"projector {row['zero_shot_top1']:.2f}% -> {row['projector_top1']:.2f}%, agrees with the weak "
            f"teachers {row['vs_weak']['top1_agreement']:.1f}% (KL {row['vs_weak']['kl']:.3f}), with the final "
            f"teacher {row['vs_final']['top1_agreement']:.1f}% (KL {row['vs_final']['kl']:.3f}) | "
            f"{row['adapter_bytes']:,} B, transfer {row['transfer_seconds']:.0f} s",
            flush=True,
        )
    best = max(range(len(rows)), key=lambda i: rows[i]["projector_top1"])
    print(f"highest projector top-1 on the selection split: [{best}] {'; '.join(rows[best]['variant'])}")
    summary = {
        "preset": args.preset,
        "overrides": args.overrides,
        "selection_images": len(selection),
        "final_top1": top1(final_logits),
        "rows": rows,
        "best": best,
    }
    (root / "selection.json").write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
