"""``hellodd export``: a distilled set with its light labels, as one self-describing folder anyone can load.

::

    <name>/manifest.json          format and versions, classes, the base recipe, preprocessing, the student
                                  views the adapters were fitted to, the loss the labels are meant for, the
                                  bytes and sha256 of every part, and the set's measured results
    <name>/README.md              a card: what the set is and how to load it
    <name>/images.safetensors     the uint8 images and their labels
    <name>/adapters.safetensors   the LoRA adapters that label these images (all the labels' bytes)
    <name>/base/<head file>       the base head's initialisation, derived from the public base and the class
                                  names (recomputable; carried so loading needs no text tower or MiniLM)
    <name>/png/<class>/*.png      optional (``--png``): the images as an ImageFolder tree

``--format hf`` writes the same set as a Hugging Face dataset that ``datasets.load_dataset(folder)`` opens
and ``hf upload`` publishes: the images as ``data/train-*.parquet`` shards (:mod:`hellodd.hf`) in place of
``images.safetensors``, and ``README.md`` a dataset card whose YAML header carries what the Hub reads; the
adapters, base head and manifest sit beside them, hash-checked the same way.

``--tar`` also writes ``<name>.tar`` beside the folder.  :func:`hellodd.load` opens either, checks every
part against the manifest and rebuilds the labeller.  The folder is assembled under a temporary name and
renamed into place, so an interrupted export never leaves a half-written set behind.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import tarfile
from pathlib import Path

from hellodd.config import Config, named, scored_by
from hellodd.errors import UserError
from hellodd.hf import features, pyarrow, write_shards
from hellodd.io import atomic_path, file_metadata, read_json, tensor_sha256, write_bytes, write_json
from hellodd.layout import (
    ADAPTER_FILE,
    CARD_FILE,
    CONTACT_SHEET,
    IMAGES_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    PNG_FOLDER,
    cache_dir,
    distilled_dir,
    evaluate_dir,
    export_dir,
    hf_shards_glob,
)
from hellodd.projector.bases import head_file, kind_of, weights_id
from hellodd.sets import (
    EXPORT_FORMAT,
    EXPORT_VERSION,
    file_record,
    projector_for,
    read_set,
    sealed,
)
from hellodd.tables import aggregate
from hellodd.tasks import task_of
from hellodd.version import __version__

ROLES = {
    IMAGES_FILE: "the distilled images (uint8 [N, C, H, W]) and their labels (class indices or class maps)",
    ADAPTER_FILE: "LoRA adapters of the image-to-label projector: the light labels",
}
SHARD_ROLE = "the distilled images (PNG), labels and class names: a Hugging Face dataset's train split"
FORMATS = ("folder", "hf")


def head_file_of(adapter_meta: dict) -> str:
    """The cache file name of the adapters' base head (recorded; recomputed for files from before it was)."""

    p, info = adapter_meta["projector"], adapter_meta["base_info"]
    if info.get("head_file"):
        return info["head_file"]
    if p.get("head_init", "names") != "names":
        return ""  # drawn again from the public font and the class names when loaded
    wid = weights_id(p["base"], p["random_init"], p["base_seed"], info.get("checkpoint_sha256"))
    return head_file(p["base"], wid, adapter_meta["classes"])


def measured_results(cfg: Config, images) -> dict | None:
    """The set's evaluation (per label source: mean ± std of the task's metric, label bytes), if it was made
    on these images."""
    path = evaluate_dir(cfg) / METRICS_FILE
    if not path.is_file():
        return None
    m = read_json(path)
    if m.get("images_sha256") != tensor_sha256(images):
        return None  # evaluated before the set was distilled again: not this set's numbers
    out: dict = {"epochs": m.get("epochs"), "score_name": scored_by(m).metric_name, "per_source": {}}
    for e in aggregate(m["rows"], m["storage"]):
        out["per_source"].setdefault(e["source"], {})[e["student"]] = {
            "mean": e["mean"],
            "std": e["std"],
            "seeds": e["n"],
            "label_bytes": e["bytes"],
        }
    return out


def build_manifest(
    cfg: Config,
    name: str,
    set_meta: dict,
    adapter_meta: dict,
    parts: dict,
    results,
    images: dict | None = None,
) -> dict:
    """The manifest; ``images`` describes images held outside ``images.safetensors`` (an hf export's shards)."""
    p, info, ev = adapter_meta["projector"], adapter_meta["base_info"], cfg.evaluate
    mean, std = kind_of(p["base"]).norm_of(p["base"])
    total = sum(v["bytes"] for v in parts.values())
    task = task_of(cfg)
    formula = task.loss_formula(ev.loss)
    return {
        "format": EXPORT_FORMAT,
        "format_version": EXPORT_VERSION,
        "hellodd_version": __version__,
        "name": name,
        "preset": cfg.preset,
        "task": task.name,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "classes": set_meta["classes"],
        "count": set_meta["count"],
        "ipc": set_meta.get("ipc"),  # None for a subset of whole images (the task counts its images)
        "image_shape": set_meta["resolution"],
        "variant": set_meta["variant"],
        "source": set_meta["source"],
        "base": {
            "name": p["base"],
            "pretrained": info.get("pretrained"),
            "checkpoint_sha256": info.get("checkpoint_sha256"),  # a CLIP file the loader must be given
            "weights_sha256": info.get("weights_sha256"),  # packaged weights (EfficientNet-Lite0)
            "seed": p["base_seed"] if p["random_init"] else None,  # a seeded random base: the seed is all
            "image_size": p["image_size"],
            "encoder_rank": p["encoder_rank"],
            "head_rank": p["head_rank"],
            "frozen_depth": p["frozen_depth"],
            "dense": p.get("dense", False),  # a logit map per image
            "adapter_dtype": p["adapter_dtype"],
            "head_init": info.get("head_init"),
        },
        "preprocessing": {
            "images": "uint8 [N, C, H, W]; divide by 255 for [0, 1] floats",
            "labeller": (
                f"grey images repeated to 3 channels, antialiased bilinear resize to {p['image_size']} px, "
                "then normalised with mean and std"
            ),
            "mean": list(mean),
            "std": list(std),
        },
        "views": {
            "what": "the student views the adapters were fitted to and the loader generates",
            "crop_scale": [ev.crop_min_scale, 1.0],
            "crop_ratio": [3 / 4, 4 / 3],
            "flip": 0.5,
            "cutmix_alpha": ev.cutmix_alpha,
            "batch_size": ev.batch_size,
        },
        "loss": {
            "name": ev.loss,
            "ce_weight": ev.ce_weight,
            "temperature": ev.temperature,
            "formula": formula,
        },
        "training": {
            "optimizer": "AdamW, no weight decay on biases and norm weights",
            "lr": ev.lr,
            "weight_decay": ev.weight_decay,
            "epochs": ev.epochs,
            "schedule": ev.schedule,
        },
        "parts": parts,
        **({"images": images} if images else {}),
        "bytes": {
            "images": sum(parts[f]["bytes"] for f in (images["files"] if images else [IMAGES_FILE])),
            "labels": parts[ADAPTER_FILE]["bytes"],
            "total": total,
        },
        "results": results,
    }


SIZE_CATEGORIES = ((10**3, "n<1K"), (10**4, "1K<n<10K"), (10**5, "10K<n<100K"), (10**6, "100K<n<1M"))


def size_category(n: int) -> str:
    """The Hub's size bucket of ``n`` examples."""
    return next((label for bound, label in SIZE_CATEGORIES if n < bound), "n>1M")


def _scalar(v) -> str:
    if isinstance(v, bool) or v is None:
        return json.dumps(v)
    if isinstance(v, dict | list):
        return "{}" if isinstance(v, dict) else "[]"
    return json.dumps(v, ensure_ascii=False)  # a double-quoted YAML string: JSON's escapes are YAML's


def to_yaml(value, indent: int = 0) -> list[str]:
    """Block-style YAML of dicts, lists and scalars (no YAML library needed to write a card's header)."""
    pad, out = "  " * indent, []
    items = value.items() if isinstance(value, dict) else ((None, v) for v in value)
    for k, v in items:
        if k is None:
            head = f"{pad}- "
        else:
            key = str(k) if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(k)) else json.dumps(str(k))
            head = f"{pad}{key}:"
        if isinstance(v, dict | list) and v:
            inner = to_yaml(v, indent + 1)
            out += [head + inner[0].lstrip(), *inner[1:]] if k is None else [head, *inner]
        else:
            out.append(f"{head}{'' if k is None else ' '}{_scalar(v)}")
    return out


def card_header(m: dict) -> dict:
    """What the Hub reads from a dataset card: license, task, tags, size, and where the data files are."""
    dtypes = {"image": "image", "class_name": "string"}
    return {
        "license": m["license"],
        "pretty_name": m["name"],
        "task_categories": [named(m.get("task")).hf_category],
        "tags": ["dataset-distillation", "light-labels", "lora", "hellodd"],
        "size_categories": [size_category(m["count"])],
        "configs": [
            {"config_name": "default", "data_files": [{"split": "train", "path": hf_shards_glob("train")}]}
        ],
        "dataset_info": {
            "features": [
                {"name": "label", "dtype": {"class_label": {"names": dict(enumerate(m["classes"]))}}}
                if name == "label"
                else {"name": name, "dtype": dtypes[name]}
                for name in features(m["classes"])
            ],
            "splits": [
                {"name": "train", "num_bytes": m["images"]["table_bytes"], "num_examples": m["count"]}
            ],
            "download_size": m["bytes"]["images"],
            "dataset_size": m["images"]["table_bytes"],
        },
    }


def hf_sections(m: dict) -> list[str]:
    """An hf export card's own sections: how the set was made, its use with datasets, the labeller, upload."""
    b = m["base"]
    return [
        "",
        "## How it was made",
        "",
        f"hellodd's pipeline on the `{m['preset']}` preset (`hellodd run --preset {m['preset']}`, or its "
        "stages): a teacher trajectory, LoRA adapters on the frozen base trained to imitate its early "
        f"checkpoints, then the images ({m['variant']}, from {m['source']}); exported with "
        "`hellodd export --format hf`. The labels are not stored outputs: they are the adapters "
        f"({m['bytes']['labels']:,} bytes) on a {b['name']} base anyone can rebuild.",
        "",
        "## Use with datasets",
        "",
        "```python",
        "from datasets import load_dataset",
        f'ds = load_dataset("{m["name"]}")["train"]  # this folder, or its Hub id; image, label, class_name',
        "```",
        "",
        "## Rebuild the labeller",
        "",
        "```bash",
        f"pip install 'hellodd[hf]' && hellodd verify {m['name']}",
        "```",
        "",
        "`hellodd verify` checks every file against `manifest.json` and rebuilds the labeller (base + "
        "adapters); in Python, `hellodd.load(path).labeller()` is that frozen module.",
        "",
        "## Upload",
        "",
        "```bash",
        f"hf upload YOU/{m['name']} {m['name']} . --repo-type dataset  # huggingface_hub's CLI",
        "```",
    ]


def card(m: dict) -> str:
    """The README.md beside the manifest (an hf export's: a Hugging Face dataset card)."""
    b, tr, v = m["base"], m["training"], m["views"]
    task = named(m.get("task"))
    per, (model, call) = task.card_count(m["ipc"]), task.card_model()
    lines = [
        f"# {m['name']}",
        "",
        f"A distilled dataset with light labels, made by hellodd {m['hellodd_version']} (HeLlO, arXiv 2408.08201):",
        f"{m['count']} images ({per}, {len(m['classes'])} classes, {m['image_shape']} each, "
        f"{m['variant']} from {m['source']}), labelled by LoRA adapters on a frozen {b['name']} base "
        f"({'seeded random' if b['seed'] is not None else 'pretrained'}; encoder rank {b['encoder_rank']}, "
        f"head rank {b['head_rank']}).",
        "",
        f"Bytes: images {m['bytes']['images']:,}, labels (adapters) {m['bytes']['labels']:,}, "
        f"everything {m['bytes']['total']:,}. Every part's sha256 is in `manifest.json`.",
        "",
        "## Load and train",
        "",
        "```python",
        "import hellodd, torch, torchvision",
        f'ds = hellodd.load("{m["name"]}")  # checks every part; rebuilds the labeller',
        model,
        f"opt = torch.optim.AdamW(model.parameters(), lr={tr['lr']:g}, weight_decay={tr['weight_decay']:g})",
        f"for x, y, target in ds.loader(batch_size={v['batch_size']}, epochs={tr['epochs']}, seed=0):"
        "  # crops, flips, CutMix + labels",
        f"    loss = ds.loss({call}, target, y)",
        "    opt.zero_grad(); loss.backward(); opt.step()",
        "```",
        "",
        "`ds.images`, `ds.labels` and `ds.dataset()` give the images for your own augmentation;",
        "`ds.labeller(device)` turns any batch of [0, 1] views into logits.",
    ]
    if b["checkpoint_sha256"]:
        lines += [
            "",
            f"The base needs its checkpoint file (sha256 `{b['checkpoint_sha256']}`): "
            "`hellodd.load(path, base_checkpoint=FILE)`.",
        ]
    res = m.get("results")
    if res:
        name = scored_by(res).metric_name
        lines += [
            "",
            f"## Measured ({res['epochs']} epochs, final-epoch {name}, mean ± std over seeds)",
            "",
            f"| label source | student | {name} | label bytes |",
            "|---|---|---|---|",
        ]
        for source, per in res["per_source"].items():
            for student, r in per.items():
                nb = f"{r['label_bytes']:,}" if r["label_bytes"] is not None else "-"
                mean, std = r["mean"], r["std"]
                lines.append(f"| {source} | {student} | {mean:.2f} ± {std:.2f} ({r['seeds']}) | {nb} |")
    if m.get("images"):
        lines = ["---", *to_yaml(card_header(m)), "---", "", *lines, *hf_sections(m)]
    return "\n".join(lines) + "\n"


def run_export(
    cfg: Config,
    to: str | None = None,
    tar: bool = False,
    png: bool = False,
    fmt: str = "folder",
    license: str = "unknown",
) -> dict:
    """Write the export folder (``fmt`` ``hf``: a Hugging Face dataset) of the configured distilled set, and
    its ``.tar``; returns its manifest."""
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt}: must be {' or '.join(FORMATS)}")
    hf = fmt == "hf"
    if hf:
        pyarrow("--format hf")  # the extra, before anything is read or written
        if png:
            raise UserError("--png: an hf export already holds every image as a PNG (in its parquet shards)")
    d = distilled_dir(cfg)
    if not d.is_dir():
        raise UserError(
            f"{d}: no distilled set to export; run 'hellodd distill' first (same --out and settings)"
        )
    images, labels, set_meta = read_set(d)
    task = task_of(cfg)
    if hf and task.hf_category is None:
        raise UserError(f"--format hf: a class per image only (a {task.name} set exports as a folder)")
    adapters = projector_for(cfg, images)
    if not adapters.is_file():
        raise UserError(f"{adapters}: no adapters label this set; run 'hellodd projector' first")
    adapter_meta = file_metadata(adapters)
    dest = Path(to) if to else export_dir(cfg)
    tmp = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "base").mkdir(parents=True)
    roles = {ADAPTER_FILE: ROLES[ADAPTER_FILE]}
    held = None  # where the images are when not in images.safetensors
    if hf:
        shards, table_bytes = write_shards(images, labels, set_meta["classes"], tmp)
        roles.update(dict.fromkeys(shards, SHARD_ROLE))
        held = {
            "layout": "parquet",
            "files": shards,
            "sha256": tensor_sha256(images),
            "labels_sha256": tensor_sha256(labels),
            "table_bytes": table_bytes,
        }
    else:
        shutil.copyfile(d / IMAGES_FILE, tmp / IMAGES_FILE)
        roles[IMAGES_FILE] = ROLES[IMAGES_FILE]
    shutil.copyfile(adapters, tmp / ADAPTER_FILE)
    head = head_file_of(adapter_meta)
    if head and (cache_dir(cfg) / head).is_file():
        shutil.copyfile(cache_dir(cfg) / head, tmp / "base" / head)
        roles[f"base/{head}"] = "the base head's initialisation (recomputable from the public base and names)"
    if png:  # the task's pictures of a set under png/, without their contact sheet
        task.pictures(images, labels, set_meta["classes"], tmp)
        (tmp / CONTACT_SHEET).unlink()
        roles.update(
            {p.relative_to(tmp).as_posix(): task.png_role for p in sorted((tmp / PNG_FOLDER).rglob("*.png"))}
        )
    parts = {rel: {**file_record(tmp / rel), "role": role} for rel, role in roles.items()}
    results = measured_results(cfg, images)
    manifest = build_manifest(cfg, dest.name, set_meta, adapter_meta, parts, results, held)
    manifest["license"] = license
    write_bytes(tmp / CARD_FILE, card(manifest).encode())
    role = "this set's card (a Hugging Face dataset card)" if hf else "this set's card"
    manifest["parts"][CARD_FILE] = {**file_record(tmp / CARD_FILE), "role": role}
    manifest = sealed(manifest)
    write_json(tmp / MANIFEST_FILE, manifest)
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        os.replace(tmp, dest)
        shutil.rmtree(old)
    else:
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, dest)
    line = (
        f"export {dest}{' (a Hugging Face dataset)' if hf else ''}: {manifest['count']} images "
        f"({manifest['bytes']['images']:,} B) + adapters "
        f"({manifest['bytes']['labels']:,} B), {len(parts)} parts, {manifest['bytes']['total']:,} B in all"
    )
    if tar:
        tar_path = dest.with_suffix(".tar")
        with atomic_path(tar_path) as t, tarfile.open(t, "w") as archive:
            archive.add(dest, arcname=dest.name)
        line += f"; {tar_path} ({tar_path.stat().st_size:,} B)"
    return {"path": str(dest), "manifest": manifest, "summary": line}
