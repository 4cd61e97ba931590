import gzip

import pytest
import torch

from hellodd.config import DataConfig
from hellodd.data import FASHION_MNIST_CLASSES, load_data, per_class_subset
from hellodd.errors import UserError


def test_fashion_mnist_idx_loads_with_train_and_val_apart(idx_root):
    b = load_data(DataConfig(name="fashion-mnist", root=str(idx_root), image_size=28))
    assert b.classes == FASHION_MNIST_CLASSES and b.channels == 1
    assert b.train.images.shape == (60, 1, 28, 28) and b.val.images.shape == (30, 1, 28, 28)
    assert b.train.images.dtype == torch.uint8
    assert torch.bincount(b.train.targets).tolist() == [6] * 10
    # the raw bytes survive unchanged (no resize at 28 px)
    raw = gzip.open(idx_root / "train-images-idx3-ubyte.gz").read()[16 : 16 + 784]
    assert bytes(b.train.images[0, 0].flatten().tolist()) == raw


def test_fashion_mnist_resize_and_per_class_caps(idx_root):
    cfg = DataConfig(
        name="fashion-mnist", root=str(idx_root), image_size=32, train_per_class=2, val_per_class=1
    )
    b = load_data(cfg)
    assert b.train.images.shape == (20, 1, 32, 32) and len(b.val) == 10
    assert torch.bincount(b.train.targets).tolist() == [2] * 10
    assert torch.equal(
        load_data(cfg).train.images, b.train.images
    )  # seeded: every stage sees the same subset


def test_imagefolder_tree(folder_root):
    b = load_data(DataConfig(name="imagefolder", root=str(folder_root), image_size=16))
    assert b.channels == 3 and b.num_classes == 3 and len(b.train) == 12 and len(b.val) == 6
    x, y = b.train[0]
    assert x.shape == (3, 16, 16) and x.dtype == torch.uint8 and y == 0
    assert b.classes[0] != "n01440764"  # WordNet IDs become readable names for prompts


def test_synthetic_is_deterministic_and_balanced():
    cfg = DataConfig(name="synthetic", image_size=12, synthetic_classes=3, synthetic_per_class=5)
    a, b = load_data(cfg, seed=3), load_data(cfg, seed=3)
    assert torch.equal(a.train.images, b.train.images)
    assert torch.bincount(a.train.targets).tolist() == [5, 5, 5]


def test_per_class_subset_is_capped_and_sorted():
    targets = torch.tensor([0, 1, 0, 1, 0, 2])
    idx = per_class_subset(targets, 2, seed=0)
    assert idx.tolist() == sorted(idx.tolist())
    assert torch.bincount(targets[idx]).tolist() == [2, 2, 1]


def _corrupt_magic(root):
    (root / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 20))


def _truncate(root):
    data = gzip.open(root / "t10k-images-idx3-ubyte.gz").read()
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(data[:-100]))


def _remove_labels(root):
    (root / "train-labels-idx1-ubyte.gz").unlink()


def _not_gzip(root):
    (root / "train-images-idx3-ubyte.gz").write_bytes(b"this is not gzip")


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (_corrupt_magic, "not an IDX images file"),
        (_truncate, "truncated"),
        (_remove_labels, "no train-labels"),
        (_not_gzip, "cannot read"),
    ],
)
def test_damaged_fashion_mnist_is_one_clear_error(idx_root, damage, fragment):
    damage(idx_root)
    with pytest.raises(UserError, match=fragment):
        load_data(DataConfig(name="fashion-mnist", root=str(idx_root)))


def _no_val(root):
    import shutil

    shutil.rmtree(root / "val")


def _empty_class(root):
    for f in (root / "train" / "n01443537").iterdir():
        f.unlink()


def _mismatched(root):
    (root / "val" / "n01484850").rename(root / "val" / "n99999999")


@pytest.mark.parametrize(
    "damage, fragment",
    [
        (_no_val, "no val/ folder"),
        (_empty_class, "not a valid ImageFolder"),
        (_mismatched, "different class folders"),
    ],
)
def test_malformed_imagefolder_is_one_clear_error(folder_root, damage, fragment):
    damage(folder_root)
    with pytest.raises(UserError, match=fragment):
        load_data(DataConfig(name="imagefolder", root=str(folder_root), image_size=16))


def test_missing_folder(tmp_path):
    with pytest.raises(UserError, match="folder not found"):
        load_data(DataConfig(name="fashion-mnist", root=str(tmp_path / "nowhere")))
