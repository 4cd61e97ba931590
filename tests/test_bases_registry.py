"""The projector's kinds of base are a registry: a new base is one register call; building a base (and its
adapters) is seeded and leaves the caller's generator alone; the checkpoint check names each base's option."""

import pytest
import torch
from torch import nn

from hellodd.cli import main
from hellodd.config import ProjectorConfig
from hellodd.errors import UserError
from hellodd.projector import (
    REGISTRY,
    BaseInfo,
    BaseKind,
    Projector,
    adapter_tensors,
    add_adapters,
    build_base,
    kind_of,
    load_projector,
    register,
    save_adapters,
)
from hellodd.projector.bases import check_base, head_file, weights_id
from hellodd.projector.registry import check_checkpoint

CLASSES = ["cat", "dog", "truck"]
TOY_MEAN, TOY_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def _check_toy(pcfg: ProjectorConfig) -> None:
    if pcfg.base.partition(":")[2] not in ("small", "wide"):
        raise UserError(f"--set projector.base={pcfg.base}: toy:small or toy:wide")


def _build_toy(pcfg: ProjectorConfig, classes, cache_dir, text_head) -> Projector:
    width = 8 if pcfg.base == "toy:small" else 16
    encoder = nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()
    )
    info = BaseInfo(
        base=pcfg.base,
        image_size=pcfg.image_size,
        mean=TOY_MEAN,
        std=TOY_STD,
        pretrained=not pcfg.random_init,
        head_init="random rows",
        head_file=None,
    )
    head = torch.randn(len(classes), width)  # drawn from the seeded stream of the build
    return Projector(encoder, head_weight=head, head_bias=None, info=info, classes=classes)


TOY = BaseKind(
    name="toy",
    usage="toy:<small|wide>",
    check=_check_toy,
    build=_build_toy,
    mean=TOY_MEAN,
    std=TOY_STD,
    packaged_weights=lambda spec: f"{spec}-v1",
    head_file=lambda spec, wid, classes: f"toy-{wid}-{len(classes)}.safetensors",
)


@pytest.fixture
def toy():
    register(TOY)
    yield TOY
    del REGISTRY["toy"]


def test_a_new_base_is_one_register_call(toy, tmp_path):
    pcfg = ProjectorConfig(base="toy:small", random_init=True, image_size=16, encoder_rank=2, head_rank=2)
    assert kind_of("toy:small") is toy and kind_of("toy:wide") is toy
    check_base(pcfg)
    with pytest.raises(UserError, match="toy:small or toy:wide"):
        check_base(ProjectorConfig(base="toy:huge", random_init=True))
    with pytest.raises(UserError, match=r"unknown base 'nope' \(.*clip:<open_clip architecture>.*toy:<small"):
        kind_of("nope")
    assert weights_id("toy:small", False, 0, None) == "toy:small-v1"
    assert weights_id("toy:small", True, 3, None) == "seed:3"
    assert head_file("toy:small", "w", CLASSES) == "toy-w-3.safetensors"

    p = build_base(pcfg, CLASSES)
    assert p.info.base == "toy:small" and torch.equal(p.mean.flatten(), torch.tensor(TOY_MEAN))
    targets = add_adapters(p, pcfg.encoder_rank, pcfg.head_rank)
    assert targets == ["encoder.0", "head"]
    with torch.no_grad():
        for name, t in p.named_parameters():
            if "lora_B" in name:
                t.normal_()
        x = torch.rand(2, 1, 20, 20)
        out = p(x)
    assert out.shape == (2, len(CLASSES))
    save_adapters(tmp_path / "a.safetensors", p, pcfg)
    q = load_projector(tmp_path / "a.safetensors")  # the base rebuilt from the file's metadata alone
    with torch.no_grad():
        torch.testing.assert_close(q(x), p.eval()(x))


def test_a_seeded_build_leaves_the_callers_generator_alone():
    from hellodd.projector.clip import _register_model_configs

    _register_model_configs()
    pcfg = ProjectorConfig(
        base="clip:hellodd-RN-tiny", random_init=True, image_size=32, encoder_rank=4, head_rank=2
    )
    torch.manual_seed(7)
    before = torch.get_rng_state()
    p = build_base(pcfg, CLASSES)
    add_adapters(p, pcfg.encoder_rank, pcfg.head_rank)
    assert torch.equal(torch.get_rng_state(), before)  # neither the base nor its adapters drew from it

    # the same numbers as one global stream seeded before the build (how the base and adapters were drawn
    # before builds were forked): the base's weights, the text head and the adapters' random start
    torch.manual_seed(pcfg.base_seed)
    q = kind_of(pcfg.base).build(pcfg, CLASSES, None, True)
    add_adapters(q, pcfg.encoder_rank, pcfg.head_rank)
    own, old = adapter_tensors(p), adapter_tensors(q)
    assert own.keys() == old.keys() and any("lora_A" in k for k in own)
    assert all(torch.equal(own[k], old[k]) for k in own)
    assert all(torch.equal(a, b) for a, b in zip(p.state_dict().values(), q.state_dict().values()))

    torch.manual_seed(8)  # another caller's stream: the same projector
    r = build_base(pcfg, CLASSES)
    add_adapters(r, pcfg.encoder_rank, pcfg.head_rank)
    assert all(torch.equal(own[k], t) for k, t in adapter_tensors(r).items())


@pytest.mark.parametrize(
    ("base", "extra", "message"),
    [
        ("clip:hellodd-RN-tiny", {}, "needs weights: pass --clip-checkpoint PATH"),
        (
            "clip:hellodd-RN-tiny",
            {"checkpoint": "/nowhere/rn.pt"},
            "--clip-checkpoint /nowhere/rn.pt: file not found",
        ),
        ("sam:hellodd-vit-tiny", {}, "needs weights: pass --set projector.checkpoint=PATH"),
        (
            "sam:hellodd-vit-tiny",
            {"checkpoint": "/nowhere/sam.pth"},
            "--set projector.checkpoint=/nowhere/sam.pth: file not found",
        ),
        (
            "efficientnet-lite0",
            {"checkpoint": "/nowhere/e.pth"},
            "--set projector.checkpoint=/nowhere/e.pth: efficientnet-lite0 reads no checkpoint",
        ),
    ],
)
def test_the_checkpoint_check_names_each_bases_option(base, extra, message):
    pcfg = ProjectorConfig(base=base, random_init=False, **extra)
    with pytest.raises(UserError) as e:
        check_checkpoint(pcfg)
    assert str(e.value).startswith(message) or message in str(e.value), str(e.value)
    check_checkpoint(ProjectorConfig(base=base, random_init=True, **extra))  # a seeded base reads no file


@pytest.mark.parametrize(
    ("preset", "args", "message"),
    [
        ("synthetic", ["--clip-checkpoint", "{tmp}/rn.pt"], "--clip-checkpoint {tmp}/rn.pt: file not found"),
        ("synthetic", [], "needs weights: pass --clip-checkpoint PATH"),
        (
            "synthetic-scenes",
            ["--set", "projector.base=sam:hellodd-vit-tiny", "--set", "projector.checkpoint={tmp}/sam.pth"],
            "--set projector.checkpoint={tmp}/sam.pth: file not found",
        ),
        (
            "synthetic-scenes",
            ["--set", "projector.base=sam:hellodd-vit-tiny"],
            "needs weights: pass --set projector.checkpoint=PATH",
        ),
        (
            "synthetic-scenes",
            ["--set", "projector.checkpoint={tmp}/e.pth"],
            "--set projector.checkpoint={tmp}/e.pth: efficientnet-lite0 reads no checkpoint",
        ),
    ],
)
def test_a_bad_checkpoint_is_one_line_naming_the_option_through_the_cli(
    tmp_path, capsys, preset, args, message
):
    out = tmp_path / "run"
    argv = ["projector", "--preset", preset, "--out", str(out), "--set", "projector.random_init=false"]
    argv += [a.format(tmp=tmp_path) for a in args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("hellodd: error:") and err.count("\n") == 1 and "Traceback" not in err, err
    assert message.format(tmp=tmp_path) in err, err
    assert not out.exists()  # refused before any stage


def test_the_readme_names_every_base():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = [k.usage for k in REGISTRY.values() if f"`{k.usage}`" not in readme]
    assert not missing, f"bases the README does not name: {missing}"


def test_the_record_written_with_the_adapters_holds_what_a_load_checks_and_no_more():
    """The adapter file's bytes are label bytes: how the base computes (size, mean, s, n) is not recorded."""
    tiny_clip = ProjectorConfig(base="clip:hellodd-RN-tiny", random_init=True, image_size=32)
    tiny_sam = ProjectorConfig(base="sam:hellodd-vit-tiny", random_init=True, image_size=32, dense=True)
    common = ["base", "pretrained", "checkpoint", "checkpoint_sha256"]
    record = build_base(tiny_clip, CLASSES, text_head=False).info.as_dict()
    assert list(record) == [*common, "head_init", "head_file"]
    record = build_base(tiny_sam, CLASSES).info.as_dict()
    assert list(record) == [*common, "weights_sha256", "head_init", "head_file"]
    assert record["weights_sha256"] is None and record["head_file"] is None


def test_prototypes_are_refused_for_a_head_learnt_in_full_and_for_dense_projectors():
    """A SAM base's head starts at zero (no names to draw): the base check refuses prototypes; a dense
    projector of any base is refused by the config's validation.  Both name projector.head_init."""
    from hellodd.config import apply_overrides, preset

    sam = ProjectorConfig(
        base="sam:hellodd-vit-tiny", random_init=True, dense=True, image_size=32, head_init="prototypes"
    )
    with pytest.raises(UserError, match="projector.head_init=prototypes: must be names for sam:"):
        check_base(sam)
    check_base(
        ProjectorConfig(base="sam:hellodd-vit-tiny", random_init=True, dense=True, image_size=32)
    )  # names: accepted
    with pytest.raises(UserError, match="projector.head_init: must be names for dense projectors"):
        apply_overrides(preset("synthetic-scenes"), ["projector.head_init=prototypes"])
