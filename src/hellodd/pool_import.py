"""``hellodd teachers --import CKPT...``: a model pool from checkpoints a user already has.

No one should retrain an ImageNet trajectory that already sits on their disk.  Each file may be

* a torchvision ``references/classification`` or ``references/segmentation`` checkpoint: a dict with
  ``model`` (the network's state dict, possibly with DDP's ``module.`` or torch.compile's ``_orig_mod.``
  prefix) and ``epoch``; a segmentation network's auxiliary head (``aux_classifier.``, a training-time loss
  only) is left out;
* a plain state dict (``.pth``/``.pt`` via ``torch.load(weights_only=True)``, or ``.safetensors``);
* a hellodd checkpoint (a state dict of the whole classifier, ``net.``-prefixed).

The pool epoch of a file is, first, an explicit ``PATH@EPOCH``; else the dict's ``epoch`` + 1 (the
references store the 0-based index of the epoch just finished); else ``N`` + 1 from a ``model_N.pth`` name
(the references' file names); else the file is refused.  A folder stands for every checkpoint file in it.
Each checkpoint is loaded into ``teacher.arch`` built for the data's classes (strictly: another architecture
or class count is refused with one line naming the file) and evaluated on the validation split with the
task's metric (top-1, or mIoU), so the pool records real scores.  The latest epoch becomes ``final.safetensors`` (the observer and the online
teacher).  The outputs are those of :func:`hellodd.teachers.train_teachers`, with each entry's source file and
its sha256 recorded.
"""

from __future__ import annotations

import re
import shutil
import time
from pathlib import Path

import torch

from hellodd import engine
from hellodd.config import Config
from hellodd.errors import UserError
from hellodd.io import sha256
from hellodd.layout import FINAL_FILE, STATE_FILE, pool_file, stage_dir
from hellodd.models import count_parameters, save_classifier
from hellodd.records import write_config, write_results
from hellodd.tasks import task_of
from hellodd.teachers import write_pool_index

SUFFIXES = (".pth", ".pt", ".ckpt", ".safetensors")
PREFIXES = ("module.", "_orig_mod.")
AUXILIARY = "aux_classifier."  # torchvision segmenters' training-only head


def expand(specs: list[str]) -> list[tuple[Path, float | None]]:
    """``PATH``, ``PATH@EPOCH`` or a folder -> (file, explicit epoch or None), in a stable order."""
    out = []
    for spec in specs:
        path, _, epoch = spec.rpartition("@") if "@" in spec else (spec, "", "")
        p = Path(path)
        if epoch:
            try:
                explicit = float(epoch)
            except ValueError:
                raise UserError(f"--import {spec}: the part after @ must be an epoch number") from None
        else:
            explicit = None
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.suffix in SUFFIXES and f.is_file())
            if not files:
                raise UserError(f"--import {p}: no checkpoint files ({', '.join(SUFFIXES)}) in this folder")
            out += [(f, explicit) for f in files]
        elif p.is_file():
            out.append((p, explicit))
        else:
            raise UserError(f"--import {p}: file not found")
    return out


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], int | None]:
    """The state dict in a checkpoint file and the references' ``epoch`` field if it has one."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file  # only for .safetensors checkpoints

            obj = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(f"{path}: not a readable checkpoint ({str(e).splitlines()[0][:160]})") from None
    epoch = None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        epoch = obj.get("epoch")
        obj = obj["model"]
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{path}: holds no state dict (expected a dict of tensors, or one under 'model')")
    state = {}
    for k, v in obj.items():
        for prefix in PREFIXES:
            k = k.removeprefix(prefix)
        state[k] = v
    return state, int(epoch) if isinstance(epoch, int) else None


def pool_epoch(path: Path, explicit: float | None, field: int | None) -> float:
    if explicit is not None:
        return explicit
    if field is not None:
        return float(field + 1)
    m = re.fullmatch(r"model_(\d+)", path.stem)
    if m:
        return float(int(m.group(1)) + 1)
    raise UserError(f"{path}: no epoch (no 'epoch' field, not named model_N); pass it as {path}@EPOCH")


def fit(model, state: dict[str, torch.Tensor], path: Path, arch: str, classes: int) -> None:
    """Load ``state`` into the network (a hellodd checkpoint: whole; else its torchvision network, also a
    segmenter's, without its auxiliary head); one line if it does not fit."""
    target = model if all(k.startswith(("net.", "adapter.")) for k in state) else model.net
    inner = getattr(target, "net", None)
    if isinstance(inner, torch.nn.Module) and all(k.startswith("net.") for k in target.state_dict()):
        target = inner  # the torchvision model inside its logits wrapper (a segmenter's "out")
        if not hasattr(target, "aux_classifier") or target.aux_classifier is None:
            state = {k: v for k, v in state.items() if not k.startswith(AUXILIARY)}
    try:
        target.load_state_dict(state, strict=True)
    except RuntimeError as e:
        detail = next((line.strip() for line in str(e).splitlines()[1:] if line.strip()), str(e))
        raise UserError(f"{path}: does not fit {arch} for {classes} classes ({detail[:200]})") from None


def import_teachers(cfg: Config, fabric, specs: list[str]) -> dict:
    """Build the teacher stage's pool from existing checkpoints, each evaluated on the validation split."""
    t = cfg.teacher
    out = stage_dir(cfg, "teachers")
    if (out / STATE_FILE).exists():
        raise UserError(f"{out}: holds a trained teacher trajectory; import into another --out")
    task = task_of(cfg.data)
    bundle = task.load(cfg.data, cfg.engine.seed)
    files = expand(specs)
    t0 = time.perf_counter()
    entries, seen = [], {}
    bar = engine.progress(fabric, total=len(files), desc=f"teachers import ({t.arch})", unit="ckpt")
    for path, explicit in files:
        state, field = read_checkpoint(path)
        epoch = pool_epoch(path, explicit, field)
        if epoch in seen:
            raise UserError(
                f"{path}: epoch {epoch:g} again (also {seen[epoch]}); pass PATH@EPOCH to tell them apart"
            )
        seen[epoch] = path
        model = task.build(t.arch, bundle.num_classes, bundle.channels, bundle.image_size)
        fit(model, state, path, t.arch, bundle.num_classes)
        frozen = engine.frozen(fabric, model)
        val = task.evaluate(fabric, frozen, bundle.val, bundle.classes, t.eval_batch_size, desc="val")
        entry = {
            "epoch": epoch,
            "step": None,
            "file": pool_file(epoch),
            **{k: val[k] for k in task.scores[:2]},
        }
        entry.update(source=str(path.resolve()), source_sha256=sha256(path))
        if fabric.is_global_zero:
            save_classifier(
                out / entry["file"], model, epoch=epoch, step=None, val=val, imported_from=entry["source"]
            )
        entries.append(entry)
        bar.update(1)
    bar.close()
    entries.sort(key=lambda e: e["epoch"])
    final = entries[-1]
    metrics = {
        "arch": t.arch,
        "params": count_parameters(model),
        "imported": True,
        "dataset": {
            "name": cfg.data.name,
            "source": bundle.source,
            "val": len(bundle.val),
            "classes": bundle.num_classes,
        },
        "seconds": time.perf_counter() - t0,
        "pool": entries,
        "task": task.name,
        "metric": task.metric,
        "metric_name": task.metric_name,
        f"final_val_{task.metric}": final[task.metric],
    }
    if fabric.is_global_zero:
        write_config(out, cfg, "teachers")
        shutil.copyfile(out / final["file"], out / FINAL_FILE)
        write_pool_index(out, t.arch, entries, imported=True)
        files_bytes = {e["file"]: (out / e["file"]).stat().st_size for e in entries}
        storage = {
            "what": "imported teacher checkpoints (fp32 safetensors)",
            "files": files_bytes,
            "teacher_bytes": (out / FINAL_FILE).stat().st_size,
            "teacher_params": metrics["params"],
        }
        write_results(out, metrics, storage)
    fabric.barrier()
    return metrics
