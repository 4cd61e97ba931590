"""The field's stored-label compressors (LPLD, LPQLD) as label sources: plans, bytes, replay and reuse."""

import pytest
import torch

from hellodd import compressors
from hellodd.augment import Stream, render
from hellodd.config import is_label_source
from hellodd.io import file_metadata
from hellodd.labels import LabelStore, stored_path, write_label_stores

N, C, S = 12, 300, 8  # 300 classes: class indices need two bytes, as at ImageNet's 1,000


def test_names_parse_and_refuse():
    assert compressors.parse("lpld:40") == ("lpld", "40")
    assert compressors.parse("lpqld:adapters") == ("lpqld", "adapters")
    for bad in ("lpld", "lpld:0.5", "lpld:x", "lpqld:40+gift", "stored:40"):
        assert not compressors.is_compressor(bad)
    assert is_label_source("lpld:200") and not is_label_source("lpld:200+gift")


def test_plans_follow_the_ratio():
    # 300 epochs of 10 steps: x40 keeps 75 records, and lpqld's prune is LPQLD's 10x
    p = compressors.plan("lpld:40", 300, 10, 1000)
    assert (p.records, p.topk, p.epochs_written) == (75, 0, 8)
    q = compressors.plan("lpqld:40", 300, 10, 1000)
    # 10x fewer records, 4x from top-k: 1000 fp16 values (2,000 B) -> k x (2 B value + 2 B index) = 500 B
    assert (q.records, q.topk) == (300, 125)
    assert compressors.plan("lpqld:200", 300, 10, 1000).topk == 25
    assert compressors.plan("lpqld:10", 300, 10, 1000).topk == 500
    # at the adapters' bytes: full label values 300 x 10 x 100 views x 1000 x 2 B = 600 MB over 6 MB = x100
    a = compressors.plan("lpld:adapters", 300, 10, 1000, adapter_bytes=6_000_000, views=100)
    assert a.ratio == pytest.approx(100) and a.records == 30


def test_reuse_temperature_steps_down_as_lpqld():
    temps = [compressors.reuse_temperature(e, 300, 20.0) for e in (0, 29, 30, 60, 299)]
    assert temps[:2] == [20.0, 20.0] and temps[2] == pytest.approx(14.0) and temps[3] == pytest.approx(9.8)
    assert temps[-1] == 2.0


class Teacher(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(3 * S * S, C)

    def forward(self, x):
        return self.fc(x.flatten(1))


def _write(tmp_path, name, epochs=20):
    images = torch.randint(
        0, 256, (N, 3, S, S), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    stream = Stream(N, S, 4, seed=3)  # 3 steps per epoch
    teacher = Teacher().eval()
    p = compressors.plan(name, epochs, stream.steps_per_epoch, C)
    key = {"test": name}
    store = LabelStore(tmp_path / name, key, p.epochs_written, "float16", p.topk, p.records)
    files = write_label_stores([store], teacher, images, stream, "cpu")[0]
    src = compressors.PrunedLabels(store.root, stream, key, C, p, epochs, name, {}, 4.0, True)
    return images, stream, teacher, p, files, src


def test_lpld_keeps_a_prefix_of_records_and_replays_them_exactly(tmp_path):
    images, stream, teacher, p, files, src = _write(tmp_path, "lpld:10")
    assert p.records == 6 and len(files) == 2  # 60 records / 10, over two epoch files of 3 steps
    assert [file_metadata(f)["steps"] for f in files] == [3, 3]
    drawn = set()
    for epoch in range(20):
        for step in range(stream.steps_per_epoch):
            e, s = src.record(epoch, step)
            drawn.add((e, s))
            idx, crops, mix = src.batch_params(epoch, step)
            want = stream.batch_params(e, s)  # the record's own views, as written
            assert torch.equal(idx, want[0])
            x = render(images, idx, crops, mix, "cpu")
            t = src.targets(x, None, mix, epoch, step)
            with torch.no_grad():
                assert torch.allclose(t, teacher(x).half().float())
    assert (
        drawn <= {(e, s) for e in range(2) for s in range(3)} and len(drawn) == 6
    )  # every kept record reused


def test_lpld_draws_with_replacement_and_lpqld_without(tmp_path):
    _, stream, _, _, _, lpld = _write(tmp_path, "lpld:10")
    _, _, _, _, _, lpqld = _write(tmp_path, "lpqld:10")
    repeats = {"lpld": 0, "lpqld": 0}
    for epoch in range(20):
        for name, src in (("lpld", lpld), ("lpqld", lpqld)):
            recs = [src.record(epoch, s) for s in range(stream.steps_per_epoch)]
            repeats[name] += len(recs) - len(set(recs))
    assert repeats["lpqld"] == 0 and repeats["lpld"] > 0


def test_lpqld_rebuilds_marginal_renormalised_targets(tmp_path):
    images, stream, teacher, p, files, src = _write(tmp_path, "lpqld:40")
    # prune 10x, 4x from top-k: 300 fp16 values (600 B) -> k x (2 B value + 2 B index) at 10 / 40 of the bytes,
    # k = 10 x 300 x 2 / (40 x 4) = 37.5, rounded half to even
    assert p.topk == 38
    assert src.kind == "probs"
    idx, crops, mix = src.batch_params(0, 0)
    x = render(images, idx, crops, mix, "cpu")
    probs = src.targets(x, None, mix, 0, 0)
    assert torch.allclose(probs.sum(1), torch.ones(len(probs)), atol=1e-5)
    assert ((probs > 0).sum(1) == p.topk).all()  # zero outside the kept top-k
    with torch.no_grad():
        z = teacher(x)
    top = z.topk(p.topk, 1).indices.sort(1).values
    assert torch.equal((probs > 0).nonzero()[:, 1].view(len(probs), -1), top)
    # later in training the reused logits are read at a lower temperature: sharper targets
    late = src.targets(x, None, mix, 19, 0) if src.record(19, 0) == src.record(0, 0) else None
    if late is not None:
        assert late.max() > probs.max()


def test_compressed_files_weigh_about_one_xth(tmp_path):
    sizes = {}
    for name in ("lpld:1", "lpld:10", "lpqld:10"):
        *_, files, _ = _write(tmp_path, name)
        sizes[name] = sum(f.stat().st_size for f in files)
    assert 7 < sizes["lpld:1"] / sizes["lpld:10"] < 13
    assert 6 < sizes["lpld:1"] / sizes["lpqld:10"] < 14
    assert stored_path(tmp_path / "lpld:1", 19).is_file()


def test_evaluate_sweeps_compressors_on_their_own_seeds(synthetic_run, tmp_path):
    """The sweep's sources run on evaluate.sweep_seeds only, cost what their files weigh (less than stored
    labels), and their files are deleted after each seed when evaluate.keep_stored is false."""
    import shutil

    from hellodd.cli import main
    from hellodd.io import read_json

    for stage in ("teachers", "projector", "distill"):
        shutil.copytree(synthetic_run / stage, tmp_path / stage)
    sets = [
        "evaluate.label_sources=hard,stored,lpld:4,lpqld:adapters",
        "evaluate.sweep_seeds=0",
        "evaluate.keep_stored=false",
    ]
    args = ["evaluate", "--preset", "synthetic", "--out", str(tmp_path)]
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 0
    m = read_json(next((tmp_path / "evaluate").glob("*/metrics.json")))
    seeds = {(r["source"], r["seed"]) for r in m["rows"]}
    assert ("stored", 1) in seeds and ("lpld:4", 0) in seeds and ("lpld:4", 1) not in seeds
    assert m["sweep_seeds"] == {"lpld:4": [0], "lpqld:adapters": [0]}
    stored, lpld = m["storage"]["stored"]["bytes"], m["storage"]["lpld:4"]["bytes"]
    assert 0 < lpld < stored / 2
    assert not list(
        (tmp_path / "evaluate").rglob("epoch_*.safetensors")
    )  # every store deleted once its seed was done


def test_a_prototype_head_labels_its_own_prototypes():
    """head_init=prototypes: each class's row is the base's feature of the class name drawn in a public font,
    so the untrained projector already labels those drawings with their own class (zero stored bytes)."""
    from pathlib import Path

    from hellodd.config import ProjectorConfig
    from hellodd.glyphs import prototype_images
    from hellodd.projector.bases import build_base

    pcfg = ProjectorConfig(base="efficientnet-lite0", random_init=True, image_size=32, head_init="prototypes")
    if not Path(pcfg.prototype_font).is_file():
        pytest.skip("the prototype font is not installed (make glyphs)")
    classes = list("一上下不中也了交人他")
    p = build_base(pcfg, classes).eval()
    with torch.no_grad():
        logits = p(prototype_images(classes, pcfg.prototype_font, 32))
    assert torch.equal(logits.argmax(1), torch.arange(len(classes)))
    assert p.info.prototype_font_sha256 and p.info.head_file is None


def test_a_prototype_head_survives_its_adapter_file_and_refuses_another_font(tmp_path):
    """The adapter file records head_init and the font: loading it rebuilds the same prototype head (the same
    logits as the projector that was saved), and a font whose bytes changed since is refused in one line."""
    import shutil
    from pathlib import Path

    from hellodd.config import ProjectorConfig
    from hellodd.errors import UserError
    from hellodd.projector.adapters import add_adapters, load_projector, save_adapters
    from hellodd.projector.bases import build_base

    font = ProjectorConfig().prototype_font
    if not Path(font).is_file():
        pytest.skip("the prototype font is not installed (make glyphs)")
    own_font = tmp_path / "face.ttc"
    shutil.copy(font, own_font)
    pcfg = ProjectorConfig(
        base="efficientnet-lite0",
        random_init=True,
        image_size=32,
        head_init="prototypes",
        prototype_font=str(own_font),
        encoder_rank=2,
        head_rank=2,
    )
    classes = list("一上下不中也了交人他")
    p = build_base(pcfg, classes)
    add_adapters(p, pcfg.encoder_rank, pcfg.head_rank, pcfg.frozen_depth)
    with torch.no_grad():
        for name, t in p.named_parameters():
            if t.requires_grad:
                t.add_(0.01 * torch.randn(t.shape, generator=torch.Generator().manual_seed(len(name))))
    save_adapters(tmp_path / "adapters.safetensors", p, pcfg)
    x = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = p.eval()(x)
        got = load_projector(tmp_path / "adapters.safetensors", cache_dir=tmp_path / "cache")(x)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)  # fp16 adapters in the file
    with open(own_font, "ab") as f:
        f.write(b"\0" * 16)
    with pytest.raises(UserError, match="not the font"):
        load_projector(tmp_path / "adapters.safetensors", cache_dir=tmp_path / "cache")


def test_the_report_counts_the_compressors_the_projector_beats_at_equal_or_larger_bytes():
    """The verdict names each stored-label source with its bytes, orders a sweep by ratio, and counts how many
    of the sources that weigh at least the adapters the projector beats (hand-made numbers)."""
    from hellodd.frontier import verdict

    base = {"student": "convnet", "random": False, "std": 0.1, "n": 2}
    rows = [
        ("projector", 30.0, 1000),
        ("teacher", 40.0, 5000),
        ("stored", 41.0, 100_000),
        ("lpld:200", 25.0, 500),  # lighter: not counted
        ("lpld:40", 29.0, 2500),  # heavier and beaten
        ("lpld:adapters", 31.0, 1000),  # equal bytes, not beaten
    ]
    lines = verdict([{**base, "source": s, "mean": m, "bytes": b} for s, m, b in rows])
    text = "\n".join(lines)
    assert "BELOW the teacher's" in text
    assert text.index("`lpld:40`") < text.index("`lpld:200`") < text.index("`lpld:adapters`")
    assert "beat 1 of the 3 stored-label sources that weigh at least its adapters" in text
    assert "1/100 of the stored labels" in text


def test_a_missing_prototype_font_is_refused_before_any_stage(tmp_path, capsys):
    """head_init=prototypes with a font that is not there: one line naming the option, exit 2, nothing written."""
    from hellodd.cli import main

    args = ["run", "--preset", "synthetic", "--out", str(tmp_path / "run")]
    sets = ["projector.head_init=prototypes", f"projector.prototype_font={tmp_path / 'no.ttf'}"]
    assert main([*args, *[a for s in sets for a in ("--set", s)]]) == 2
    assert "projector.prototype_font" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
