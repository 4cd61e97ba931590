"""Any classifier as a projector base (``classifier:<arch>``): built from a hellodd, torchvision or timm
checkpoint, read before its last layer, LoRA on its convolutions and linear layers, its head drawn from
prototypes, bound to the checkpoint by sha256; and the glyph base preset that never sees a glyphs class."""

from __future__ import annotations

import shutil

import pytest
import torch
from torch import nn

from hellodd.cli import main
from hellodd.config import ProjectorConfig
from hellodd.errors import UserError
from hellodd.io import save_tensors
from hellodd.models import build_model, save_classifier
from hellodd.projector.adapters import add_adapters, load_projector, save_adapters
from hellodd.projector.bases import build_base

CHARS = ["一", "二", "三", "人", "口"]


def _pcfg(base: str, checkpoint="", **kw) -> ProjectorConfig:
    return ProjectorConfig(base=base, checkpoint=str(checkpoint), head_init="prototypes", image_size=16, **kw)


@pytest.fixture
def convnet_file(tmp_path):
    torch.manual_seed(0)
    model = build_model("convnet-d2-w16", num_classes=7, in_channels=1, image_size=16)
    path = tmp_path / "base.safetensors"
    save_classifier(path, model)
    return path, model.eval()


def test_a_hellodd_classifier_is_read_before_its_last_layer(convnet_file):
    path, model = convnet_file
    p = build_base(_pcfg("classifier:convnet-d2-w16", path), CHARS).eval()
    x = torch.rand(4, 1, 16, 16)
    with torch.no_grad():
        want = model.net.features(model.adapter(x)).flatten(1)  # the input of its 7-way classifier
        assert torch.allclose(p.encode(x), want, atol=1e-6)
    assert p.head.weight.shape == (len(CHARS), 16 * 4 * 4)
    assert p.info.checkpoint_sha256 and p.info.pretrained
    assert not any(isinstance(m, nn.Linear) for m in p.encoder.modules())  # the classifier layer is gone


def test_lora_goes_on_every_convolution_and_the_head(convnet_file):
    path, _ = convnet_file
    p = build_base(_pcfg("classifier:convnet-d2-w16", path), CHARS)
    convs = [f"encoder.{n}" for n, m in p.encoder.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2
    assert add_adapters(p, encoder_rank=2, head_rank=2) == [*convs, "head"]
    trainable = [n for n, t in p.named_parameters() if t.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


def test_the_prototype_head_reads_each_prototype_as_its_class(convnet_file):
    from hellodd.glyphs import prototype_images

    path, _ = convnet_file
    p = build_base(_pcfg("classifier:convnet-d2-w16", path), CHARS).eval()
    assert p.head.weight.abs().sum() > 0  # drawn, not left at zero
    with torch.no_grad():
        logits = p(prototype_images(CHARS, ProjectorConfig().prototype_font, 16))
    assert logits.argmax(1).tolist() == list(range(len(CHARS)))
    assert "prototypes" in p.info.head_init


def test_the_adapters_are_bound_to_the_checkpoint(convnet_file, tmp_path):
    path, _ = convnet_file
    pcfg = _pcfg("classifier:convnet-d2-w16", path, encoder_rank=2, head_rank=2)
    p = build_base(pcfg, CHARS)
    add_adapters(p, 2, 2)
    save_adapters(tmp_path / "adapters.safetensors", p, pcfg)
    assert (
        load_projector(tmp_path / "adapters.safetensors").info.checkpoint_sha256 == p.info.checkpoint_sha256
    )
    torch.manual_seed(1)  # other weights of the same architecture, in the same file
    save_classifier(path, build_model("convnet-d2-w16", num_classes=7, in_channels=1, image_size=16))
    with pytest.raises(UserError, match="not the base checkpoint the adapters .* were trained on"):
        load_projector(tmp_path / "adapters.safetensors")


def test_torchvision_and_timm_state_dicts(tmp_path):
    import timm
    import torchvision

    tv = torchvision.models.resnet18(num_classes=11)  # any class count: the last layer is dropped
    torch.save({"state_dict": tv.state_dict()}, tmp_path / "tv.pth")
    p = build_base(_pcfg("classifier:torchvision.resnet18", tmp_path / "tv.pth"), CHARS).eval()
    x = torch.rand(2, 3, 16, 16)
    tv.fc = nn.Identity()
    with torch.no_grad():
        assert torch.allclose(p.encode(x), tv.eval()(p.prepare(x)), atol=1e-5)
    net = timm.create_model("test_resnet", num_classes=5)
    save_tensors(tmp_path / "timm.safetensors", net.state_dict(), {})
    p = build_base(_pcfg("classifier:timm.test_resnet", tmp_path / "timm.safetensors"), CHARS)
    assert p.head.weight.shape == (len(CHARS), net.num_features)
    assert p.info.mean == tuple(net.pretrained_cfg["mean"])


@pytest.mark.parametrize(
    "spec", ["classifier:convnet", "classifier:torchvision.resnet18", "classifier:timm.test_resnet"]
)
def test_the_exported_normalisation_is_the_one_the_base_reads_with(spec):
    """What an export's manifest tells a loader (the kind's norm_of) is what the built base normalises with."""
    from hellodd.projector.registry import kind_of

    built = build_base(_pcfg(spec, random_init=True), CHARS).info
    assert kind_of(spec).norm_of(spec) == (tuple(built.mean), tuple(built.std))


@pytest.mark.parametrize(
    "base, extra, message",
    [
        ("classifier:", {}, "unknown base 'classifier:'"),
        ("classifier:convnet-x", {}, "unknown architecture 'convnet-x'"),
        ("classifier:torchvision.nonet", {}, "torchvision has no model 'nonet'"),
        ("classifier:timm.nonet", {}, "timm has no model 'nonet'"),
        (
            "classifier:convnet",
            {"head_init": "names"},
            "has no text side; use projector.head_init=prototypes",
        ),
        ("classifier:convnet", {}, "a convnet-d2-w16 checkpoint, not convnet"),
    ],
)
def test_a_classifier_base_that_cannot_be_built_is_one_line(convnet_file, base, extra, message):
    path, _ = convnet_file
    pcfg = _pcfg(base, path)
    for k, v in extra.items():
        setattr(pcfg, k, v)
    with pytest.raises(UserError, match=message):
        build_base(pcfg, CHARS)


def test_a_junk_state_dict_is_refused_naming_the_file(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match=r"projector.checkpoint=.*junk.pth: not a state dict"):
        build_base(_pcfg("classifier:torchvision.resnet18", tmp_path / "junk.pth"), CHARS)


def test_a_changed_base_checkpoint_is_refused_before_any_stage(synthetic_run, tmp_path, capsys):
    shutil.copytree(synthetic_run / "teachers", tmp_path / "teachers")
    base = tmp_path / "base.safetensors"
    shutil.copy(tmp_path / "teachers" / "final.safetensors", base)
    args = ["--preset", "synthetic", "--out", str(tmp_path), "--set", "projector.base=classifier:convnet"]
    args += ["--set", f"projector.checkpoint={base}", "--set", "projector.head_init=prototypes"]
    args += ["--set", "projector.random_init=false"]  # the preset's base is seeded random: read the file
    assert main(["projector", *args]) == 0
    shutil.copy(tmp_path / "teachers" / "pool" / "epoch_000.500.safetensors", base)  # another network
    capsys.readouterr()
    assert main(["distill", *args]) == 2  # its view adaptation would load the adapters
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not the base the adapters in" in err[0] and str(base) in err[0]
    assert not (tmp_path / "distill").exists()  # refused before any stage wrote


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.glyph_first=500", "data.glyph_first: must be at least data.glyph_reserved=1000"),
        ("data.glyph_val_faces=held-out", "data.glyph_val_faces: must be train"),
    ],
)
def test_the_glyph_base_never_sees_a_glyphs_class_nor_a_held_out_face(tmp_path, capsys, override, message):
    assert main(["teachers", "--preset", "glyphs-base", "--out", str(tmp_path), "--set", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not any(tmp_path.iterdir())


def test_the_glyph_base_classes_are_disjoint_from_the_glyphs_presets():
    from hellodd import config as C
    from hellodd.glyphs import chosen

    base = chosen(C.preset("glyphs-base").data)
    assert len(base) == 2000 and not set(base) & set(chosen(C.preset("glyphs-1000").data))
    p = C.preset("glyphs-100-glyph-base").projector
    assert (p.base, p.checkpoint, p.head_init) == (
        "classifier:convnet",
        "runs/glyphs-base/teachers/final.safetensors",
        "prototypes",
    )
