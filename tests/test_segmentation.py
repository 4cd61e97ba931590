"""Segmentation building blocks: scenes, dataset readers and their bad inputs, dense views, metrics, models."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from hellodd.augment import CropParams, identity_crops, sample_cutmix
from hellodd.errors import UserError
from hellodd.segmentation.data import IGNORE, VOC_CLASSES, load_masks_tree, load_scenes, load_voc
from hellodd.segmentation.metrics import confusion, scores
from hellodd.segmentation.models import build_segmenter
from hellodd.segmentation.scenes import INK, SceneSettings, compose, scenes_id, synthetic_garments
from hellodd.segmentation.views import crop_masks, cutmix_masks


def test_scenes_are_seeded_and_a_pixel_is_its_visible_garments():
    garments, labels = synthetic_garments(3, 6, seed=0)
    a = compose(garments, labels, 12, SceneSettings(size=32), seed=5)
    b = compose(garments, labels, 12, SceneSettings(size=32), seed=5)
    c = compose(garments, labels, 12, SceneSettings(size=32), seed=6)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[1], c[1])
    images, masks = a
    assert images.shape == (12, 1, 32, 32) and masks.shape == (12, 32, 32) and masks.dtype == torch.uint8
    assert torch.equal(images[:, 0] > INK, masks > 0)  # ink is a garment's, the rest background
    assert set(masks.unique().tolist()) <= {0, 1, 2, 3} and len(masks.unique()) > 2


def test_a_later_garment_hides_what_it_covers():
    garments = torch.full((2, 1, 8, 8), 200, dtype=torch.uint8)
    garments[1] = 100
    labels = torch.tensor([0, 1])
    settings = SceneSettings(size=8, min_objects=8, max_objects=8, scale=(1.0, 1.0))
    images, masks = compose(garments, labels, 20, settings, seed=0)
    # every pixel shows one garment's value, and its class is that garment's
    ink = masks > 0
    assert torch.equal(images[:, 0][ink & (masks == 1)].unique(), torch.tensor([200], dtype=torch.uint8))
    assert torch.equal(images[:, 0][ink & (masks == 2)].unique(), torch.tensor([100], dtype=torch.uint8))


def test_scenes_id_names_version_settings_and_garments():
    base = scenes_id(SceneSettings(), "abc", 10, 5, 0)
    assert base.startswith("scenes-v1-")
    assert (
        len(
            {
                base,
                scenes_id(SceneSettings(size=32), "abc", 10, 5, 0),
                scenes_id(SceneSettings(), "abd", 10, 5, 0),
                scenes_id(SceneSettings(), "abc", 10, 5, 1),
                scenes_id(SceneSettings(), "abc", 11, 5, 0),
            }
        )
        == 5
    )


def _write_idx(path, array: np.ndarray, images: bool) -> None:
    header = (2051 if images else 2049).to_bytes(4, "big") + len(array).to_bytes(4, "big")
    if images:
        header += array.shape[1].to_bytes(4, "big") + array.shape[2].to_bytes(4, "big")
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_fashion_mnist_scenes_take_train_garments_for_train_and_test_garments_for_val(tmp_path):
    for prefix, value in (("train", 90), ("t10k", 210)):
        ink = np.zeros((6, 28, 28), np.uint8)
        ink[:, 6:22, 6:22] = value
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", ink, True)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(6) % 10, False)
    data = load_scenes("fashion-mnist-scenes", str(tmp_path), 48, train=8, val=4, seed=0)
    assert data.classes[0] == "background" and data.classes[1] == "T-shirt/top" and len(data.classes) == 11
    # resampling edges blend with the canvas, so only the value of the full-ink interior is checked
    assert data.train.images.max() <= 90 < data.val.images.max()
    again = load_scenes("fashion-mnist-scenes", str(tmp_path), 48, train=8, val=4, seed=0)
    assert again.source == data.source and torch.equal(again.train.masks, data.train.masks)
    assert (
        load_scenes("fashion-mnist-scenes", str(tmp_path), 48, train=8, val=4, seed=1).source != data.source
    )


def _palette_png(path, ids: np.ndarray) -> None:
    im = Image.fromarray(ids.astype(np.uint8), mode="P")
    im.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    im.save(path)


def _voc(root, names=("a", "b"), size=(40, 30)):
    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for n in names:
        Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{n}.jpg"
        )
        ids = np.zeros((size[1], size[0]), np.uint8)
        ids[5:20, 5:25] = 15  # person
        ids[4, :] = IGNORE  # a border
        _palette_png(root / "SegmentationClass" / f"{n}.png", ids)
    for split in ("train", "val"):
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")


def test_voc_reads_palette_masks_at_the_image_size_with_ignore_kept(tmp_path):
    _voc(tmp_path)
    data = load_voc(tmp_path, 24)
    assert data.classes == VOC_CLASSES and data.train.images.shape == (2, 3, 24, 24)
    assert data.train.masks.shape == (2, 24, 24)
    assert set(data.train.masks.unique().tolist()) == {0, 15, IGNORE}


@pytest.mark.parametrize(
    "spoil, message",
    [
        (lambda r: _palette_png(r / "SegmentationClass" / "b.png", np.zeros((10, 10))), "mask is 10x10 px"),
        (
            lambda r: _palette_png(r / "SegmentationClass" / "b.png", np.full((30, 40), 21)),
            "class id 21 is outside",
        ),
        (lambda r: (r / "SegmentationClass" / "b.png").unlink(), "no mask"),
        (lambda r: (r / "JPEGImages" / "b.jpg").write_bytes(b"not a jpeg"), "not a readable image"),
    ],
)
def test_bad_segmentation_files_are_named_in_one_line(tmp_path, spoil, message):
    _voc(tmp_path)
    spoil(tmp_path)
    with pytest.raises(UserError, match=message) as e:
        load_voc(tmp_path, 24)
    assert "b." in str(e.value) and "\n" not in str(e.value)


def test_masks_tree_with_a_classes_file(tmp_path):
    (tmp_path / "classes.txt").write_text("sky\nroad\ncar\n")
    for split in ("train", "val"):
        (tmp_path / "images" / split).mkdir(parents=True)
        (tmp_path / "masks" / split).mkdir(parents=True)
        Image.fromarray(np.full((16, 20, 3), 128, np.uint8)).save(tmp_path / "images" / split / "x.png")
        ids = np.zeros((16, 20), np.uint8)
        ids[8:] = 2
        Image.fromarray(ids, mode="L").save(tmp_path / "masks" / split / "x.png")
    data = load_masks_tree(tmp_path, 16)
    assert data.classes == ["sky", "road", "car"] and set(data.val.masks.unique().tolist()) == {0, 2}
    Image.fromarray(np.full((16, 20), 3, np.uint8), mode="L").save(tmp_path / "masks" / "val" / "x.png")
    with pytest.raises(UserError, match="class id 3 is outside the 3 classes"):
        load_masks_tree(tmp_path, 16)


def test_a_view_moves_its_class_map_with_its_pixels():
    masks = torch.arange(16, dtype=torch.uint8).view(1, 4, 4).repeat(2, 1, 1)
    assert torch.equal(crop_masks(masks, identity_crops(2)), masks.long())
    flip = identity_crops(2)
    flip.flip = torch.tensor([True, False])
    out = crop_masks(masks, flip)
    assert torch.equal(out[0], masks[0].long().flip(-1)) and torch.equal(out[1], masks[1].long())
    shifted = CropParams(
        torch.tensor([1.0, 0.0]),
        torch.zeros(2),
        torch.ones(2),
        torch.ones(2),
        torch.zeros(2, dtype=torch.bool),
    )
    out = crop_masks(masks, shifted)
    assert (out[0, :, 2:] == IGNORE).all() and torch.equal(out[0, :, :2], masks[0, :, 2:].long())
    mix = sample_cutmix(2, 4, 1.0, torch.Generator().manual_seed(3))
    assert cutmix_masks(masks, None) is masks and cutmix_masks(masks, mix).shape == masks.shape


def test_miou_and_pixel_accuracy_leave_ignored_pixels_out():
    target = torch.tensor([[0, 0, 1, 1], [2, 2, IGNORE, IGNORE]])
    pred = torch.tensor([[0, 1, 1, 1], [2, 0, 2, 2]])
    s = scores(confusion(pred, target, 3), ["a", "b", "c"])
    # IoU: a 1/3 (tp 1, union 3), b 2/3, c 1/2; pixel accuracy 4 of 6 labelled pixels
    assert s["miou"] == pytest.approx(100 * (1 / 3 + 2 / 3 + 1 / 2) / 3) and s[
        "pixel_accuracy"
    ] == pytest.approx(400 / 6)
    assert s["pixels"] == 6 and s["per_class_iou"]["b"] == pytest.approx(66.67)


@pytest.mark.parametrize("arch", ["convnet-fcn-w32", "lraspp_mobilenet_v3_large"])
def test_segmenters_give_logits_at_the_input_resolution(arch):
    model = build_segmenter(arch, 5, 1, 32)
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 5, 32, 32)
    with pytest.raises(UserError, match="unknown segmentation architecture"):
        build_segmenter("unet9000", 5, 1, 32)


# --------------------------------------------------------------------------------------------------
# the task seam: the teachers stage on synthetic-scenes


def _scenes_cmd(out, *extra):
    from conftest import PYTHON

    return [PYTHON, "-m", "hellodd", "teachers", "--preset", "synthetic-scenes", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def scenes_run(tmp_path_factory):
    """A whole synthetic-scenes run (``hellodd run``: every stage, both subsets, the report), once per worker."""
    from hellodd.cli import main

    out = tmp_path_factory.mktemp("scenes")
    assert main(["run", "--preset", "synthetic-scenes", "--out", str(out)]) == 0
    return out


@pytest.mark.xdist_group("segmentation-teachers")
def test_segmentation_teachers_train_a_pool_scored_by_miou(scenes_run):
    from hellodd.io import read_json
    from hellodd.tasks import load_network

    tmp_path = scenes_run
    pool = read_json(tmp_path / "teachers" / "pool.json")
    assert [c["epoch"] for c in pool["checkpoints"]] == [0.5, 1.0, 1.5, 2.0]
    assert all(0 <= c["miou"] <= 100 and "top1" not in c for c in pool["checkpoints"])
    metrics = read_json(tmp_path / "teachers" / "metrics.json")
    assert metrics["task"] == "segmentation" and metrics["final_val_miou"] == pool["checkpoints"][-1]["miou"]
    model, meta = load_network(tmp_path / "teachers" / "final.safetensors")
    assert model(torch.rand(2, 1, 16, 16)).shape == (2, 4 + 1, 16, 16)  # background + 4 shapes


@pytest.mark.xdist_group("segmentation-teachers")
def test_a_killed_segmentation_teacher_resumes_to_the_same_weights(scenes_run, tmp_path):
    import subprocess

    from conftest import KILL_SEED, cli_env
    from hellodd.io import load_tensors

    killed = subprocess.run(_scenes_cmd(tmp_path), env=cli_env(HELLODD_DIE_AT_STEP=4), timeout=300)
    assert killed.returncode == -9, KILL_SEED
    resumed = subprocess.run(
        _scenes_cmd(tmp_path), env=cli_env(), timeout=300, capture_output=True, text=True
    )
    assert resumed.returncode == 0 and "resuming at step" in resumed.stdout
    # the uninterrupted reference: the module's run of the same preset
    (a, _), (b, _) = (load_tensors(o / "teachers" / "final.safetensors") for o in (tmp_path, scenes_run))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_segmentation_data_and_networks_are_checked_before_any_stage(tmp_path, capsys):
    from hellodd.cli import main

    args = [
        "teachers",
        "--preset",
        "fashion-mnist-scenes",
        "--out",
        str(tmp_path),
        "--data",
        str(tmp_path / "none"),
    ]
    assert main(args) == 2 and "folder not found" in capsys.readouterr().err
    args = [
        "teachers",
        "--preset",
        "synthetic-scenes",
        "--out",
        str(tmp_path),
        "--set",
        "teacher.arch=resnet18",
    ]
    assert main(args) == 2 and "convnet-fcn" in capsys.readouterr().err


def test_a_scene_sheet_shows_each_scene_above_its_map():
    from hellodd.segmentation.sheet import palette, scene_sheet

    garments, labels = synthetic_garments(3, 4, seed=0)
    images, masks = compose(garments, labels, 5, SceneSettings(size=16), seed=0)
    sheet = scene_sheet(images, masks, ["background", "a", "b", "c"], scale=2)
    assert sheet.width == 5 * 16 * 2 and sheet.height > 2 * 16 * 2
    first_map_pixel = sheet.getpixel((0, 16 * 2))  # top-left pixel of the first map
    assert first_map_pixel == tuple(palette(4)[int(masks[0, 0, 0])].tolist())


@pytest.mark.xdist_group("segmentation-teachers")
def test_the_dense_projector_stores_its_adapters_and_skip_head_and_labels_maps(scenes_run):
    from hellodd.io import read_json
    from hellodd.projector import load_projector

    folder = next((scenes_run / "projector").iterdir())
    metrics = read_json(folder / "metrics.json")
    assert 0 <= metrics["val_miou"] <= 100 and "val_top1" not in metrics
    assert metrics["teacher_agreement"]["top1_agreement"] > 0  # per pixel
    proj = load_projector(folder / "adapters.safetensors", cache_dir=scenes_run / "cache")
    assert proj.dense and proj.skip is not None
    stored = {n for n, p in proj.named_parameters() if p.requires_grad}
    assert any(n.startswith("skip.") for n in stored) and any("lora_" in n for n in stored)
    assert proj(torch.rand(3, 1, 16, 16)).shape == (3, 5, 16, 16)  # a map at the image's size


def test_the_observer_keeps_low_loss_images_shared_by_pixels():
    from hellodd.subset import balanced_lowest

    classes = ["background", "a", "b"]
    masks = torch.zeros(6, 4, 4, dtype=torch.uint8)
    masks[:4, :2] = 1  # four images of class a (8 pixels each)
    masks[4:, :1] = 2  # two of class b (4 pixels each): a has 32 of 40 garment pixels
    losses = torch.tensor([0.5, 0.1, 0.9, 0.2, 0.8, 0.3])
    assert balanced_lowest(losses, masks, classes, 3).tolist() == [1, 3, 5]  # two a, one b, lowest first
    assert balanced_lowest(losses, masks, classes, 6).tolist() == list(range(6))


@pytest.mark.xdist_group("segmentation-teachers")
def test_a_segmentation_run_evaluates_the_observers_and_a_random_subset(scenes_run):
    from hellodd.cli import main
    from hellodd.io import read_json
    from hellodd.sets import read_set

    out = scenes_run
    images, masks, manifest = read_set(out / "distill" / "subset6-rded")
    assert (
        images.shape == (6, 1, 16, 16) and masks.shape == (6, 16, 16) and manifest["task"] == "segmentation"
    )
    assert manifest["observer_loss_kept"] <= manifest["observer_loss_all"]
    random = read_set(out / "distill" / "subset6-random")[2]
    assert random["train_indices"] != manifest["train_indices"]
    assert (out / "distill" / "subset6-rded" / "contact_sheet.png").is_file()

    folder = out / "evaluate" / "subset6-rded"
    rows = read_json(folder / "results.json")
    assert {r["source"] for r in rows} == {
        "hard",
        "teacher",
        "weak-teachers",
        "stored",
        "compressed",
        "projector",
    }
    assert all(
        r["score_name"] == "mIoU" and 0 <= r["score"] <= 100 and len(r["per_class_iou"]) == 5 for r in rows
    )
    baseline = read_json(out / "evaluate" / "subset6-random" / "results.json")
    assert {r["source"] for r in baseline} == {r["source"] for r in rows}
    storage = read_json(folder / "metrics.json")["storage"]
    # a dense soft label is a map of logits per view: 3 epochs x one batch of 4 views x 5 classes x 16 x 16 x 2 B, plus
    # each file's views; compressed keeps 2 of 5 logits (fp16, with uint8 classes) and the rest's mean per pixel,
    # 8 B against 10 B, for 2 of the 3 epochs
    assert storage["stored"]["bytes"] > 3 * 4 * 5 * 16 * 16 * 2
    assert storage["compressed"]["bytes"] < 0.6 * storage["stored"]["bytes"]
    table = (folder / "results.md").read_text()
    assert "mIoU (mean ± std)" in table and "pixel accuracy" in table
    report = (out / "report.md").read_text()
    assert "| mIoU (mean ± std, n) |" in report and "% val mIoU." in report and "top-1" not in report
    assert main(["report", str(out), "--to", str(out / "report")]) == 0


@pytest.mark.xdist_group("segmentation-teachers")
def test_an_exported_segmentation_set_loads_and_trains_in_a_fresh_process(scenes_run, tmp_path):
    import subprocess

    from conftest import PYTHON, cli_env
    from hellodd.cli import main
    from hellodd.io import read_json

    dest = tmp_path / "scenes-set"
    args = ["export", "--preset", "synthetic-scenes", "--out", str(scenes_run), "--to", str(dest)]
    assert main([*args, "--tar", "--png"]) == 0
    manifest = read_json(dest / "manifest.json")
    assert manifest["task"] == "segmentation" and manifest["base"]["dense"] and manifest["ipc"] is None
    assert manifest["results"]["score_name"] == "mIoU"
    assert "mean" in manifest["results"]["per_source"]["projector"]["convnet-fcn-w16"]
    assert (dest / "png" / "masks").is_dir() and "mIoU" in (dest / "README.md").read_text()
    code = f"""
import hellodd, torch
ds = hellodd.load({str(dest.with_suffix(".tar"))!r})
assert ds.task == "segmentation" and ds.labels.shape == (6, 16, 16), (ds.task, ds.labels.shape)
model = torch.nn.Conv2d(1, len(ds.classes), 3, padding=1)
opt = torch.optim.SGD(model.parameters(), lr=0.1)
for x, y, target in ds.loader(batch_size=4, epochs=1, seed=0):
    assert y.shape == (4, 16, 16) and target.shape == (4, len(ds.classes), 16, 16)
    assert set(y.unique().tolist()) <= set(range(len(ds.classes))) | {{255}}
    loss = ds.loss(model(x), target, y)
    opt.zero_grad(); loss.backward(); opt.step()
print("loss", float(loss))
"""
    done = subprocess.run(
        [PYTHON, "-c", code], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "loss" in done.stdout


def test_a_voc_run_without_its_sam_checkpoint_is_refused_before_any_stage(tmp_path, capsys):
    from hellodd.cli import main

    _voc(tmp_path / "voc")
    out = tmp_path / "run"
    assert main(["run", "--preset", "voc", "--data", str(tmp_path / "voc"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "projector.checkpoint" in err[0] and "sam:vit_b" in err[0]
    assert not out.exists()


def test_a_sam_base_is_a_dense_projector_bound_to_its_checkpoint(tmp_path):
    from hellodd.config import ProjectorConfig
    from hellodd.io import load_tensors
    from hellodd.projector import add_adapters, build_base, load_projector, save_adapters
    from hellodd.projector.sam import sam_encoder

    torch.manual_seed(5)
    ckpt = tmp_path / "sam_tiny.pth"  # the official layout: the whole model's state dict
    torch.save(
        {f"image_encoder.{k}": v for k, v in sam_encoder("hellodd-vit-tiny").state_dict().items()}, ckpt
    )
    pcfg = ProjectorConfig(
        base="sam:hellodd-vit-tiny",
        checkpoint=str(ckpt),
        dense=True,
        image_size=32,
        encoder_rank=2,
        head_rank=0,
    )
    p = build_base(pcfg, ["background", "a", "b"])
    add_adapters(p, 2, 0)
    stored = {n for n, q in p.named_parameters() if q.requires_grad}
    assert {"head.weight", "head.bias"} <= stored and any("lora_" in n for n in stored)
    with torch.no_grad():
        p.head.weight.normal_()
    out = p(torch.rand(2, 1, 20, 20))
    assert out.shape == (2, 3, 20, 20)
    save_adapters(tmp_path / "a.safetensors", p, pcfg)
    tensors, meta = load_tensors(tmp_path / "a.safetensors")
    assert "head.weight" in tensors and meta["base_info"]["checkpoint_sha256"]
    q = load_projector(tmp_path / "a.safetensors")
    assert torch.allclose(
        q(torch.rand(2, 1, 20, 20) * 0 + 0.5), p.eval()(torch.full((2, 1, 20, 20), 0.5)), atol=1e-5
    )
    other = tmp_path / "other.pth"
    torch.save(
        {f"image_encoder.{k}": v * 2 for k, v in sam_encoder("hellodd-vit-tiny").state_dict().items()}, other
    )
    with pytest.raises(UserError, match="sha256 differs"):
        load_projector(tmp_path / "a.safetensors", checkpoint=other)
    with pytest.raises(UserError, match=r"needs weights: pass --set projector\.checkpoint=PATH \(a SAM"):
        build_base(ProjectorConfig(base="sam:hellodd-vit-tiny", dense=True, image_size=32), ["a"])


def test_torchvision_segmentation_references_checkpoints_import_as_a_pool(tmp_path, capsys):
    import torchvision.models.segmentation as tvs

    from hellodd.cli import main
    from hellodd.io import read_json

    torch.manual_seed(0)
    net = tvs.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=5, aux_loss=True)
    for epoch in (
        0,
        1,
    ):  # references/segmentation's layout: the model (with its auxiliary head) and the epoch
        state = {f"module.{k}": v for k, v in net.state_dict().items()}  # saved from a DDP run
        torch.save({"model": state, "epoch": epoch, "args": None}, tmp_path / f"model_{epoch}.pth")
    out = tmp_path / "run"
    args = ["teachers", "--preset", "synthetic-scenes", "--out", str(out), "--set", "data.image_size=32"]
    args += ["--set", "teacher.arch=deeplabv3_mobilenet_v3_large", "--import", str(tmp_path)]
    assert main(args) == 0
    pool = read_json(out / "teachers" / "pool.json")
    assert [c["epoch"] for c in pool["checkpoints"]] == [1.0, 2.0]
    assert all(0 <= c["miou"] <= 100 for c in pool["checkpoints"])
    assert read_json(out / "teachers" / "metrics.json")["metric"] == "miou"
    torch.save(
        {
            "model": tvs.lraspp_mobilenet_v3_large(num_classes=5, weights_backbone=None).state_dict(),
            "epoch": 0,
        },
        tmp_path / "x.pth",
    )
    assert main([*args[:-1], str(tmp_path / "x.pth"), "--out", str(tmp_path / "other")]) == 2
    assert "does not fit deeplabv3_mobilenet_v3_large" in capsys.readouterr().err


def test_a_dense_clip_base_labels_each_location_as_maskclip_does():
    import torch.nn.functional as F

    from hellodd.config import ProjectorConfig
    from hellodd.projector import add_adapters, build_base

    pcfg = ProjectorConfig(base="clip:hellodd-RN-tiny", random_init=True, image_size=64, dense=True)
    p = build_base(pcfg, ["background", "a", "b"])
    v = p.encoder.visual
    x = torch.rand(2, 3, 64, 64)
    # a uniform trunk map: every location's feature is the pooled vector's value path (MaskCLIP's reading)
    u = p.encode(x)
    assert u.shape[:2] == (2, v.output_dim) and u.shape[-1] == 2  # 64 px at stride 32
    out = p(x)
    assert out.shape == (2, 3, 64, 64)
    trunk = v.layer4(v.layer3(v.layer2(v.layer1(v.stem(p.prepare(x))))))
    tokens = trunk.flatten(2).transpose(1, 2) + v.attnpool.positional_embedding[1:]
    one = v.attnpool.c_proj(v.attnpool.v_proj(tokens[:, :1]))[:, 0]
    assert torch.allclose(
        p.scale * p.head(F.normalize(one, dim=-1)),
        p.scale * p.head(F.normalize(u[:, :, 0, 0], dim=-1)),
        atol=1e-5,
    )
    targets = add_adapters(p, 2, 2)
    assert not any("q_proj" in t or "k_proj" in t for t in targets)  # the unused attention gets no adapters


# the transfer loop and its resume point are the ones classification uses (tests/test_reliability.py, in the default
# run); this dense variant is the suite's slowest test, so it runs with -m slow
@pytest.mark.slow
@pytest.mark.xdist_group("segmentation-teachers")
def test_a_killed_dense_projector_transfer_resumes_to_the_same_adapters(scenes_run, tmp_path):
    import shutil
    import subprocess

    from conftest import KILL_SEED, PYTHON, cli_env
    from hellodd.cli import main
    from hellodd.io import load_tensors

    outs = [tmp_path / "killed", tmp_path / "ref"]
    for out in outs:
        shutil.copytree(scenes_run / "teachers", out / "teachers")
    args = [
        "projector",
        "--preset",
        "synthetic-scenes",
        "--set",
        "projector.epochs=2",
    ]  # 6 steps, states every 3
    killed = subprocess.run(
        [PYTHON, "-m", "hellodd", *args, "--out", str(outs[0])],
        env=cli_env(HELLODD_DIE_AT_STEP=5),
        timeout=300,
    )
    assert killed.returncode == -9, KILL_SEED
    resumed = subprocess.run(
        [PYTHON, "-m", "hellodd", *args, "--out", str(outs[0])], env=cli_env(), capture_output=True, text=True
    )
    assert resumed.returncode == 0 and "resuming at step 3/6" in resumed.stdout
    assert main([*args, "--out", str(outs[1])]) == 0
    a, b = (load_tensors(next((o / "projector").iterdir()) / "adapters.safetensors")[0] for o in outs)
    assert a.keys() == b.keys() and any(k.startswith("skip.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
