import pytest

from hellodd import storage


@pytest.mark.parametrize(
    "epochs, images, classes, dtype, expected",
    [
        (300, 1000, 1000, "float16", 600_000_000),  # ImageNet-1K IPC 1: the paper's "572 MB" (MiB)
        (300, 10_000, 1000, "float16", 6_000_000_000),
        (300, 100, 100, "float32", 12_000_000),
        (2, 3, 5, "float16", 60),
    ],
)
def test_stored_label_bytes_formula(epochs, images, classes, dtype, expected):
    r = storage.stored_label_bytes(epochs, images, classes, dtype=dtype, with_augmentation=False)
    assert r["bytes"] == r["label_bytes"] == expected


def test_stored_labels_with_augmentation_parameters_by_hand():
    # 2 epochs, 3 images, 5 classes, fp16, batch 2: labels 2*3*5*2 = 60; per view 5 fp32 = 2*3*20 = 120;
    # per batch (2 batches per epoch) 5 fp32 + 2 int32 indices = 28 B -> 2*2*28 = 112
    r = storage.stored_label_bytes(2, 3, 5, dtype="float16", batch_size=2)
    assert (r["label_bytes"], r["augmentation_bytes"], r["bytes"]) == (60, 232, 292)


def test_paper_units():
    assert storage.stored_label_bytes(300, 1000, 1000, with_augmentation=False)[
        "bytes"
    ] / 2**20 == pytest.approx(572.2, abs=0.05)
    r18 = storage.teacher_bytes("resnet18", 100)
    assert r18["params"] == 11_227_812 and r18["bytes"] / 2**20 == pytest.approx(42.83, abs=0.005)
    assert storage.teacher_bytes("resnet18", 1000)["bytes"] / 2**20 == pytest.approx(44.59, abs=0.005)


def test_paper_adapter_is_built_and_counted_from_real_tensors():
    ad = storage.paper_adapter(1000, 8, 128)
    # hand count: head r*(1024+1000) = 259,072; 55 convs r*(c_in*k^2+c_out) = 639,704; attention pool 122,880
    assert ad["head_params"] == 128 * (1024 + 1000)
    assert ad["encoder_params"] == 639_704 + 122_880
    assert ad["bytes"] <= 0.25 * storage.teacher_bytes("resnet18", 1000)["bytes"]
    ratio = ad["bytes"] / storage.stored_label_bytes(300, 200_000, 1000, with_augmentation=False)["bytes"]
    assert ratio == pytest.approx(3.4e-5, rel=0.05)  # the paper's "about 0.003%" at IPC 200


def test_label_storage_sources(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"x" * 123)
    assert storage.label_storage("hard")["bytes"] == 0
    assert storage.label_storage("teacher", teacher_file=f)["bytes"] == 123
    assert storage.label_storage("projector", adapter_file=f)["bytes"] == 123
    assert storage.label_storage("stored", stored_files=[f, f])["bytes"] == 246
    with pytest.raises(ValueError):
        storage.label_storage("psychic")


def test_the_b4_projector_is_counted_from_a_real_sam_vit_b():
    ad = storage.paper_sam_adapter(8, 150)
    assert ad["head_params"] == 256 * 150 + 150  # the neck's 256 channels to 150 classes, learnt in full
    assert 89e6 < ad["base_params"] < 90e6  # the image encoder: the paper's "89.85M" SAM-B
    assert ad["bytes"] == 4 * ad["params"] and ad["encoder_params"] == ad["params"] - ad["head_params"]
