"""Hugging Face datasets: a distilled set written as one, and a released one read back as distilled images.

Written by ``hellodd export --format hf`` (:mod:`hellodd.export` adds the adapters, base head, manifest and
the dataset card)::

    <name>/data/train-00000-of-0000N.parquet   columns ``image`` (the ``datasets`` Image feature: PNG bytes
                                               and a path), ``label`` (a ClassLabel with the class names)
                                               and ``class_name``; the features also in the schema metadata

Read (``distill.init=folder`` with ``distill.images`` at a local copy of a Hub dataset): parquet shards
anywhere under the folder (the train split's when the paths name splits) or a ``datasets`` ``save_to_disk``
folder (Arrow files listed by ``state.json``; a saved DatasetDict's train split).  An image column
(``image`` or ``img``: the Image feature's {bytes, path}, or encoded bytes) and a label column (``label``
or ``labels``: class indices, named by a ClassLabel or not, or class names) are needed; classes are matched
as an ImageFolder's folders are (:func:`hellodd.data.class_matcher`).  What a run can check before its first
stage (the files, their columns, the classes) is :func:`released_labels`, which decodes no image.

``pyarrow`` (the ``hf`` extra, with ``datasets``) is imported inside the functions that use it; without it
such a command is refused with one line naming ``pip install 'hellodd[hf]'``.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import torch

from hellodd.data import class_matcher, square_uint8
from hellodd.errors import UserError
from hellodd.layout import class_folder, hf_shard

HF_EXTRA = "pip install 'hellodd[hf]'"
IMAGE_COLUMNS, LABEL_COLUMNS = ("image", "img"), ("label", "labels")
SHARD_RAW_BYTES = 256 * 2**20  # a written shard holds at most this many raw image bytes
SAVED_MARKERS = ("state.json", "dataset_dict.json")  # a datasets save_to_disk folder


def pyarrow(what: str):
    """``(pyarrow, pyarrow.parquet)``, or the one line that names the extra ``what`` needs."""
    try:
        import pyarrow as pa
        import pyarrow.ipc  # noqa: F401  (pa.ipc: a save_to_disk folder's Arrow streams)
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(f"{what} needs the Hugging Face libraries (datasets, pyarrow): {HF_EXTRA}") from None
    return pa, pq


# --------------------------------------------------------------------------------------------------
# writing


def features(classes: list[str]) -> dict:
    """The columns as ``datasets`` describes them in a parquet file's ``huggingface`` metadata."""
    return {
        "image": {"_type": "Image"},
        "label": {"names": list(classes), "_type": "ClassLabel"},
        "class_name": {"dtype": "string", "_type": "Value"},
    }


def png_bytes(img: torch.Tensor) -> bytes:
    """A uint8 [C, H, W] image as PNG (lossless: it decodes to the same bytes)."""
    from PIL import Image

    arr = img[0].numpy() if img.shape[0] == 1 else img.permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def write_shards(
    images: torch.Tensor, labels: torch.Tensor, classes: list[str], root: Path
) -> tuple[list[str], int]:
    """The images and labels as the train split's parquet shards under ``root``: their relative paths, and
    the bytes of the tables in memory (a dataset card's ``num_bytes``)."""
    pa, pq = pyarrow("--format hf")
    n = len(images)
    per = max(1, SHARD_RAW_BYTES // max(1, images[0].numel()))
    count = max(1, math.ceil(n / per))
    schema = pa.schema(
        [
            ("image", pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            ("label", pa.int64()),
            ("class_name", pa.string()),
        ],
        metadata={"huggingface": json.dumps({"info": {"features": features(classes)}})},
    )
    seen: dict[int, int] = {}
    shards, nbytes = [], 0
    for s in range(count):
        rows = range(s * per, min(n, (s + 1) * per))
        pictures, ys = [], []
        for i in rows:
            y = int(labels[i])
            k = seen[y] = seen.get(y, -1) + 1
            pictures.append(
                {"bytes": png_bytes(images[i]), "path": f"{class_folder(y, classes[y])}/{k:04d}.png"}
            )
            ys.append(y)
        table = pa.table(
            {"image": pictures, "label": ys, "class_name": [classes[y] for y in ys]}, schema=schema
        )
        rel = hf_shard("train", s, count)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, root / rel)
        shards.append(rel)
        nbytes += table.nbytes
    return shards, nbytes


# --------------------------------------------------------------------------------------------------
# reading


def is_released_set(root) -> bool:
    """Whether ``root`` is a local Hugging Face dataset (parquet shards or a save_to_disk folder) rather than
    an ImageFolder tree.  Needs no pyarrow: an ImageFolder never asks for it."""
    root = Path(root)
    if not root.is_dir():
        return False
    return any((root / m).is_file() for m in SAVED_MARKERS) or next(root.rglob("*.parquet"), None) is not None


def _split_dir(root: Path) -> Path:
    """A saved DatasetDict's train split (or its only one); a saved Dataset is its own folder."""
    path = root / "dataset_dict.json"
    if not path.is_file():
        return root
    try:
        splits = json.loads(path.read_text())["splits"]
    except (ValueError, KeyError, TypeError):
        raise UserError(f"{path}: not a datasets DatasetDict description (no 'splits' list)") from None
    split = "train" if "train" in splits else (splits[0] if len(splits) == 1 else None)
    if split is None:
        raise UserError(f"{path}: no train split among {', '.join(map(str, splits))}")
    return root / split


def data_files(root) -> tuple[str, list[Path]]:
    """(``parquet`` | ``arrow``, the train split's files, in order)."""
    root = Path(root)
    saved = _split_dir(root)
    if (saved / "state.json").is_file():
        try:
            names = [f["filename"] for f in json.loads((saved / "state.json").read_text())["_data_files"]]
        except (ValueError, KeyError, TypeError):
            raise UserError(
                f"{saved / 'state.json'}: not a datasets save_to_disk state (no _data_files)"
            ) from None
        return "arrow", [saved / n for n in names]
    files = sorted(root.rglob("*.parquet"))
    train = [f for f in files if any(p.startswith("train") for p in f.relative_to(root).parts)]
    if not files:
        raise UserError(f"--set distill.images={root}: no parquet shards and no save_to_disk state.json")
    return "parquet", train or files


def _read(kind: str, path: Path, columns: list[str] | None = None):
    """One file's table (only ``columns``, if given), or the one line that names a bad shard."""
    pa, pq = pyarrow(f"reading {path}")
    if not path.is_file():
        raise UserError(f"{path}: missing (its dataset lists it)")
    try:
        if kind == "parquet":
            return pq.read_table(path, columns=columns)
        with pa.memory_map(str(path)) as source:
            table = pa.ipc.open_stream(source).read_all()
        return table.select(columns) if columns else table
    except (pa.ArrowException, OSError, ValueError) as e:
        what = "parquet shard" if kind == "parquet" else "Arrow file"
        raise UserError(f"{path}: not a readable {what} ({str(e).splitlines()[0][:160]})") from None


def _schema(kind: str, path: Path):
    pa, pq = pyarrow(f"reading {path}")
    if kind == "parquet" and path.is_file():
        try:
            return pq.read_schema(path)
        except (pa.ArrowException, OSError, ValueError) as e:
            raise UserError(
                f"{path}: not a readable parquet shard ({str(e).splitlines()[0][:160]})"
            ) from None
    return _read(kind, path).schema


def _column(schema, choices: tuple[str, ...], what: str, path: Path) -> str:
    for name in choices:
        if name in schema.names:
            return name
    raise UserError(
        f"{path}: no {what} column ({' or '.join(choices)}; it has {', '.join(schema.names) or 'none'})"
    )


def _label_names(kind: str, files: list[Path], schema, column: str) -> list[str] | None:
    """The ClassLabel names of the label column: from the files' ``datasets`` metadata, or a save_to_disk
    folder's ``dataset_info.json``."""
    info = None
    meta = schema.metadata or {}
    if b"huggingface" in meta:
        try:
            info = json.loads(meta[b"huggingface"]).get("info", {})
        except ValueError:
            info = None
    elif kind == "arrow" and (files[0].parent / "dataset_info.json").is_file():
        try:
            info = json.loads((files[0].parent / "dataset_info.json").read_text())
        except ValueError:
            info = None
    feature = ((info or {}).get("features") or {}).get(column) or {}
    names = feature.get("names") if isinstance(feature, dict) else None
    return [str(n) for n in names] if isinstance(names, list) else None


def released_labels(root, classes: list[str], source: str) -> tuple[str, list[Path], str, torch.Tensor]:
    """A released set's files, checked without decoding an image: (kind, files, image column, labels as the
    data's class indices).  Every file readable, with an image and a label column; every label a class of
    the data, and every class present."""
    kind, files = data_files(root)
    match = class_matcher(classes)
    image_col, labels = "", []
    for path in files:
        schema = _schema(kind, path)
        image_col = _column(schema, IMAGE_COLUMNS, "image", path)
        label_col = _column(schema, LABEL_COLUMNS, "label", path)
        values = _read(kind, path, [label_col]).column(0).to_pylist()
        names = _label_names(kind, files, schema, label_col)
        mapped: dict = {}
        for v in dict.fromkeys(values):
            if isinstance(v, str):
                name = v
            elif isinstance(v, int) and not isinstance(v, bool):
                if names is not None and not 0 <= v < len(names):
                    raise UserError(f"{path}: label {v} outside its {len(names)} class names")
                name = names[v] if names is not None else str(v)
            else:
                raise UserError(f"{path}: label {v!r} is neither a class index nor a class name")
            c = match(name)
            if c is None:
                raise UserError(f"{path}: no class of the {source} data is called {name!r}")
            mapped[v] = c
        labels += [mapped[v] for v in values]
    y = torch.tensor(labels, dtype=torch.long)
    missing = sorted(set(range(len(classes))) - set(y.tolist()))
    if missing:
        raise UserError(
            f"--set distill.images={root}: no image of class {classes[missing[0]]!r} ({len(missing)} missing)"
        )
    return kind, files, image_col, y


def _picture(value, path: Path, row: int):
    """A PIL image from an Image-feature cell ({bytes, path}) or encoded bytes."""
    from PIL import Image, UnidentifiedImageError

    data = value.get("bytes") if isinstance(value, dict) else value
    where = f"{path}: row {row}"
    if not data and isinstance(value, dict) and value.get("path"):
        local = path.parent / value["path"]
        if not local.is_file():
            raise UserError(f"{where}: no image bytes, and its path {value['path']} is not beside the shard")
        data = local.read_bytes()
    if not isinstance(data, bytes | bytearray) or not data:
        raise UserError(f"{where}: no image (expected encoded bytes or the Image feature's {{bytes, path}})")
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError) as e:
        raise UserError(f"{where}: not a readable image ({str(e).splitlines()[0][:120]})") from None
    return img


def read_released(root, bundle) -> tuple[torch.Tensor, torch.Tensor]:
    """A released set as distilled images: uint8 ``[N, C, S, S]`` at the data's resolution and channels
    (resized and centre-cropped as an ImageFolder's), and the data's class indices."""
    kind, files, column, labels = released_labels(root, bundle.classes, bundle.source)
    tf, mode = square_uint8(bundle.image_size), "L" if bundle.channels == 1 else "RGB"
    images = []
    for path in files:
        for row, value in enumerate(_read(kind, path, [column]).column(0).to_pylist()):
            images.append(tf(_picture(value, path, row).convert(mode)))
    return torch.stack(images), labels


def read_shards(paths: list[Path]) -> tuple[torch.Tensor, torch.Tensor]:
    """An hf export's images and labels, exactly as exported (PNG is lossless): uint8 [N, C, H, W], int64."""
    import numpy as np

    images, labels = [], []
    for path in paths:
        table = _read("parquet", path, ["image", "label"])
        for row, (value, y) in enumerate(zip(*(table.column(i).to_pylist() for i in range(2)))):
            arr = np.array(_picture(value, path, row))
            images.append(
                torch.from_numpy(arr).unsqueeze(0)
                if arr.ndim == 2
                else torch.from_numpy(arr).permute(2, 0, 1)
            )
            labels.append(y)
    return torch.stack(images).contiguous(), torch.tensor(labels, dtype=torch.long)
