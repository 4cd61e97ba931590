"""Hugging Face datasets: an export the Hub and `datasets` read, and released parquet / save_to_disk sets
relabelled as distilled images; bad ones refused with one line before any stage works."""

import io
import json
import shutil
import sys

import numpy as np
import pytest
import torch

from hellodd.cli import main
from hellodd.errors import UserError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
pytestmark = pytest.mark.xdist_group("hf")  # under xdist, one worker builds the module's export


@pytest.fixture(scope="module")
def hf_export(synthetic_run, tmp_path_factory):
    """The synthetic run, evaluated (hard and projector labels, one seed), exported with --format hf."""
    out = tmp_path_factory.mktemp("hf") / "run"
    shutil.copytree(synthetic_run, out)
    common = ["--preset", "synthetic", "--out", str(out)]
    one_seed = ["--set", "evaluate.label_sources=hard,projector", "--set", "evaluate.seeds=[0]"]
    assert main(["evaluate", *common, *one_seed]) == 0
    dest = out.parent / "synthetic-hf"
    assert main(["export", *common, "--to", str(dest), "--format", "hf", "--license", "cc-by-4.0"]) == 0
    return out, dest


def _png(rng, size=(20, 24)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _released(root, labels, shards=2, seed=0, columns=("image", "label")):
    """A set in the layout rethinkdc and other releases use on the Hub: data/train-*.parquet shards with an
    ``image`` column (the Image feature's {bytes, path}) and integer ``label``s, no names."""
    rng = np.random.default_rng(seed)
    per = -(-len(labels) // shards)
    for s in range(shards):
        ys = labels[s * per : (s + 1) * per]
        cols = {
            "image": [{"bytes": _png(rng), "path": f"{i}.png"} for i in range(len(ys))],
            "label": ys,
        }
        (root / "data").mkdir(parents=True, exist_ok=True)
        pq.write_table(
            pa.table({k: v for k, v in cols.items() if k in columns}),
            root / "data" / f"train-{s:05d}-of-{shards:05d}.parquet",
        )
    return root


def test_hf_export_opens_with_datasets_and_carries_a_hub_card(hf_export):
    import datasets
    import yaml

    out, dest = hf_export
    ds = datasets.load_dataset(str(dest))
    assert list(ds) == ["train"] and ds["train"].num_rows == 8
    f = ds["train"].features
    assert f["label"].names == [f"pattern {c}" for c in range(4)] and isinstance(f["image"], datasets.Image)
    assert [f["label"].int2str(y) for y in ds["train"]["label"]] == ds["train"]["class_name"]
    from hellodd.sets import read_set

    images, labels, _ = read_set(out / "distill" / "ipc2-rded-update")
    first = np.array(ds["train"][0]["image"])  # a PIL image, decoded by datasets
    assert torch.equal(torch.from_numpy(first).permute(2, 0, 1), images[0])
    assert ds["train"]["label"] == labels.tolist()
    text = (dest / "README.md").read_text()
    head = yaml.safe_load(text.split("---\n")[1])
    assert head["license"] == "cc-by-4.0" and head["task_categories"] == ["image-classification"]
    assert "dataset-distillation" in head["tags"] and head["size_categories"] == ["n<1K"]
    assert head["configs"][0]["data_files"][0] == {"split": "train", "path": "data/train-*.parquet"}
    m = json.loads((dest / "manifest.json").read_text())
    assert f"labels (adapters) {m['bytes']['labels']:,}" in text and "| projector | convnet-d2-w16 |" in text
    assert "hellodd verify synthetic-hf" in text and "hf upload YOU/synthetic-hf synthetic-hf ." in text
    assert set(m["parts"]) == {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()} - {
        "manifest.json"
    }


def test_hf_export_loads_verifies_and_trains_a_step(hf_export, capsys):
    import hellodd

    out, dest = hf_export
    ds = hellodd.load(dest)
    assert len(ds) == 8 and ds.images.dtype == torch.uint8 and ds.images.shape[1:] == (3, 16, 16)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 16 * 16, len(ds.classes)))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y, target = next(iter(ds.loader(batch_size=4, epochs=1, seed=0)))
    before = model[1].weight.detach().clone()
    loss = ds.loss(model(x), target, y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, model[1].weight)
    assert main(["verify", str(dest)]) == 0
    assert "8 images" in capsys.readouterr().out


def test_an_altered_shard_is_refused_with_one_line(hf_export, tmp_path, capsys):
    _, dest = hf_export
    copy = tmp_path / dest.name
    shutil.copytree(dest, copy)
    shard = next((copy / "data").glob("*.parquet"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x01
    shard.write_bytes(bytes(data))
    assert main(["verify", str(copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and shard.name in err and "sha256 differs" in err


def test_a_released_parquet_set_gets_light_labels_end_to_end(synthetic_run, tmp_path):
    out = tmp_path / "run"
    for part in ("teachers", "projector", "cache"):
        if (synthetic_run / part).is_dir():
            shutil.copytree(synthetic_run / part, out / part)
    theirs = _released(tmp_path / "rethinkdc-set", [0, 1, 2, 3, 3, 2, 1, 0])
    own = ["--preset", "synthetic", "--out", str(out), "--set", "distill.init=folder"]
    own += ["--set", f"distill.images={theirs}"]
    assert main(["distill", *own]) == 0
    one = ["--set", "evaluate.label_sources=projector", "--set", "evaluate.seeds=[0]"]
    assert main(["evaluate", *own, *one]) == 0
    from hellodd.sets import read_set

    images, labels, meta = read_set(out / "distill" / "ipc2-folder")
    assert images.shape == (8, 3, 16, 16) and labels.tolist() == [0, 1, 2, 3, 3, 2, 1, 0]
    assert (
        "made elsewhere" in meta["source"]
        and (out / "distill" / "ipc2-folder" / "adapters.safetensors").is_file()
    )
    rows = json.loads((out / "evaluate" / "ipc2-folder" / "results.json").read_text())
    assert [r["source"] for r in rows] == ["projector"] and 0 <= rows[0]["score"] <= 100


def test_a_save_to_disk_set_is_read_with_its_class_names(tmp_path):
    """A DatasetDict saved by datasets, its ClassLabel names in another order than the data's classes: the
    names decide, not the indices."""
    import datasets
    from PIL import Image

    from hellodd.config import DataConfig
    from hellodd.data import make_synthetic
    from hellodd.hf import is_released_set, read_released

    rng = np.random.default_rng(3)
    names = ["pattern 3", "pattern_2", "pattern 1", "pattern 0"]  # hellodd's folder spelling matches too
    feats = datasets.Features({"img": datasets.Image(), "labels": datasets.ClassLabel(names=names)})
    rows = {"img": [Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)) for _ in range(4)]}
    rows["labels"] = [0, 1, 2, 3]
    root = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(rows, features=feats)}).save_to_disk(str(root))
    assert is_released_set(root) and not is_released_set(tmp_path)
    images, labels = read_released(root, make_synthetic(DataConfig(name="synthetic", image_size=8)))
    assert images.shape == (4, 3, 8, 8) and labels.tolist() == [3, 2, 1, 0]


def _bad_shard(root):
    _released(root, [0, 1, 2, 3])
    (root / "data" / "train-00001-of-00002.parquet").write_bytes(b"PAR1 not really")
    return "train-00001-of-00002.parquet: not a readable parquet shard"


def _missing_column(root):
    _released(root, [0, 1, 2, 3], columns=("image",))
    return "no label column (label or labels; it has image)"


def _unknown_name(root):
    rng = np.random.default_rng(0)
    (root / "data").mkdir(parents=True)
    table = pa.table({"image": [_png(rng) for _ in range(2)], "label": ["pattern 0", "zebra"]})
    pq.write_table(table, root / "data" / "train.parquet")
    return "no class of the synthetic data is called 'zebra'"


def _class_missing(root):
    _released(root, [0, 1, 2, 2])
    return "no image of class 'pattern 3' (1 missing)"


@pytest.mark.parametrize("make", [_bad_shard, _missing_column, _unknown_name, _class_missing])
def test_bad_released_sets_are_one_line_before_any_stage(tmp_path, capsys, make):
    fragment = make(tmp_path / "theirs")
    out = tmp_path / "run"
    args = ["distill", "--preset", "synthetic", "--out", str(out), "--set", "distill.init=folder"]
    assert main([*args, "--set", f"distill.images={tmp_path / 'theirs'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("hellodd: error:") and fragment in err
    assert not out.exists()  # refused by the preflight: no lock, no folder


def test_without_the_hf_extra_each_command_names_it(tmp_path, capsys, monkeypatch):
    theirs = _released(tmp_path / "theirs", [0, 1, 2, 3], shards=1)
    for module in ("pyarrow", "pyarrow.parquet", "pyarrow.ipc"):
        monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    common = ["--preset", "synthetic", "--out", str(tmp_path / "run")]
    assert main(["export", *common, "--format", "hf"]) == 2
    assert (
        main(["distill", *common, "--set", "distill.init=folder", "--set", f"distill.images={theirs}"]) == 2
    )
    errs = capsys.readouterr().err.strip().splitlines()
    assert len(errs) == 2 and all("pip install 'hellodd[hf]'" in e for e in errs)
    from hellodd.hf import read_shards

    with pytest.raises(UserError, match=r"hellodd\[hf\]"):
        read_shards([theirs / "data" / "train-00000-of-00001.parquet"])
