"""Does an exported set train a student as well outside hellodd as inside?  Measured, not assumed.

    python benchmarks/load_check.py EXPORT [--data DIR] [--student convnet] [--seeds 0 1 2] [--epochs N]

Opens ``EXPORT`` with :func:`hellodd.load` (nothing of the run folder is used) and, per seed, trains a student
with batches from ``ds.loader()`` and ``ds.loss``, with the protocol of the evaluation that produced the
export's ``projector`` row (the manifest's optimiser settings: AdamW without decay on biases and norm weights,
its learning rate and schedule, its epochs; bf16 autocast for the student on a CPU with bf16, as the demo
preset).  ``loader(seed=s)`` replays the evaluation stream of student seed s exactly (stream seed
``engine.seed * 1000 + s``, with ``engine.seed`` 0).  The labels are computed in fp32 here and under the
student's bf16 autocast in the evaluation, so equal numbers are not expected, equal within noise is.
Evaluates each student on the Fashion-MNIST test split (``--data``) and prints its final-epoch top-1, the
mean ± std, and the manifest's projector row for comparison.  Prints what it measured; asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("export")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--student", default="convnet")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, help="default: the manifest's")
    ap.add_argument("--fp32", action="store_true", help="no bf16 autocast for the student")
    args = ap.parse_args()

    import torch

    import hellodd
    from hellodd.config import DataConfig
    from hellodd.data import load_fashion_mnist
    from hellodd.models import build_model
    from hellodd.students import lr_factor, student_optimizer

    ds = hellodd.load(args.export)
    tr = ds.manifest["training"]
    epochs = args.epochs or tr["epochs"]
    val = load_fashion_mnist(DataConfig(root=args.data, image_size=ds.images.shape[-1])).val
    xs = torch.stack([val[i][0] for i in range(len(val))]).float() / 255
    ys = torch.tensor([int(val[i][1]) for i in range(len(val))])
    batch = ds.manifest["views"]["batch_size"]
    spe = max(1, len(ds) // min(batch, len(ds)))
    use_bf16 = not args.fp32
    print(
        f"{ds!r}; student {args.student}, {epochs} epochs, {spe} step(s) per epoch, bf16 autocast {use_bf16}"
    )
    results = []
    for seed in args.seeds:
        torch.manual_seed(seed)
        model = build_model(args.student, len(ds.classes), ds.images.shape[1], ds.images.shape[-1])
        opt = student_optimizer(model, tr["lr"], tr["weight_decay"])
        t0 = time.perf_counter()
        model.train()
        for i, (x, y, target) in enumerate(ds.loader(batch_size=batch, epochs=epochs, seed=seed)):
            if i % spe == 0:
                for g in opt.param_groups:
                    g["lr"] = tr["lr"] * lr_factor(tr["schedule"], i // spe, epochs)
            with torch.autocast("cpu", torch.bfloat16, enabled=use_bf16):
                out = model(x).float()
            loss = ds.loss(out, target, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        model.eval()
        with torch.inference_mode():
            pred = torch.cat([model(xs[j : j + 500]).argmax(1) for j in range(0, len(xs), 500)])
        top1 = 100.0 * float((pred == ys).float().mean())
        results.append(top1)
        print(f"seed {seed}: final-epoch top-1 {top1:.2f}% ({time.perf_counter() - t0:.0f} s)")
    sd = statistics.stdev(results) if len(results) > 1 else 0.0
    print(f"through hellodd.load: {statistics.mean(results):.2f} ± {sd:.2f} (n={len(results)})")
    row = ((ds.manifest.get("results") or {}).get("per_source", {}).get("projector") or {}).get(args.student)
    if row:
        mean, std = (
            row.get("mean", row.get("top1_mean")),
            row.get("std", row.get("top1_std")),
        )  # older exports
        print(f"the run's projector row: {mean:.2f} ± {std:.2f} (n={row['seeds']})")


if __name__ == "__main__":
    main()
