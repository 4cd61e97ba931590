"""How well a projector base reads a glyphs preset before any adapter, as CLIP's zero-shot accuracy is reported.

    python benchmarks/base_probe.py --preset glyphs-100 [--base classifier:convnet \
        --checkpoint runs/glyphs-base/teachers/final.safetensors --image-size 32] [--probe-epochs 30]

For the preset's classes, on its validation split (the held-out typefaces):

* zero-shot top-1 of the base with its prototype head (each class name drawn in the preset's prototype font;
  what the projector starts from, zero stored bytes);
* a linear probe: a linear layer fitted (AdamW, full batches of the frozen features, ``--probe-epochs``) on
  the features of the preset's training images, its top-1 on the validation features;
* the base's bytes (its weights file: a public base's bytes, not label bytes).

Without ``--base`` the preset's own base.  Prints what it measured; asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F


@torch.no_grad()
def features(proj, ds, batch: int = 500) -> tuple[torch.Tensor, torch.Tensor]:
    from hellodd.augment import to_float

    xs, ys = [], []
    for i in range(0, len(ds), batch):
        items = [ds[j] for j in range(i, min(i + batch, len(ds)))]
        x = torch.stack([to_float(a) for a, _ in items])
        xs.append(proj.encode(x).float())
        ys.append(torch.tensor([int(b) for _, b in items]))
    return torch.cat(xs), torch.cat(ys)


def linear_probe(train, val, classes: int, epochs: int) -> float:
    (xt, yt), (xv, yv) = train, val
    mu, sd = xt.mean(0), xt.std(0).clamp_min(1e-6)
    xt, xv = (xt - mu) / sd, (xv - mu) / sd
    torch.manual_seed(0)
    head = torch.nn.Linear(xt.shape[1], classes)
    opt = torch.optim.AdamW(head.parameters(), lr=1e-2, weight_decay=1e-4)
    for _ in range(epochs):
        for idx in torch.randperm(len(xt)).split(1024):
            loss = F.cross_entropy(head(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return 100 * (head(xv).argmax(1) == yv).float().mean().item()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="glyphs-100")
    ap.add_argument("--base")
    ap.add_argument("--checkpoint", default="")
    ap.add_argument("--image-size", type=int)
    ap.add_argument("--probe-epochs", type=int, default=30)
    args = ap.parse_args()

    from hellodd import config as C
    from hellodd.projector.bases import build_base
    from hellodd.tasks import task_of

    cfg = C.preset(args.preset)
    pcfg = cfg.projector
    if args.base:
        pcfg.base, pcfg.checkpoint = args.base, args.checkpoint
    if args.image_size:
        pcfg.image_size = args.image_size
    t0 = time.perf_counter()
    bundle = task_of(cfg.data).load(cfg.data, cfg.engine.seed)
    proj = build_base(pcfg, bundle.classes, None).eval()
    val = features(proj, bundle.val)
    with torch.no_grad():  # the projector's own head on its features (Projector.forward, whole images)
        u = F.normalize(val[0], dim=-1) if proj.normalize else val[0]
        zero_shot = 100 * ((proj.scale * proj.head(u)).argmax(1) == val[1]).float().mean().item()
    probe = linear_probe(features(proj, bundle.train), val, len(bundle.classes), args.probe_epochs)
    weights = pcfg.checkpoint or "(packaged)"
    size = os.path.getsize(pcfg.checkpoint) if pcfg.checkpoint else None
    print(
        f"{args.preset} ({len(bundle.classes)} classes, {len(bundle.train)} training / {len(bundle.val)} held-out "
        f"images), base {pcfg.base} at {pcfg.image_size} px, weights {weights}"
        + (f" ({size:,} B)" if size else "")
    )
    print(f"zero-shot top-1 (prototype head): {zero_shot:.2f}%")
    print(f"linear probe top-1 ({args.probe_epochs} epochs on frozen features): {probe:.2f}%")
    print(f"{time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
