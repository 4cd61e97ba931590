"""Label sources over one augmentation stream: shapes, sums, exact stored replay, CutMix consistency."""

import pytest
import torch

from hellodd.augment import Stream, apply_cutmix, mix_targets, render, sample_cutmix
from hellodd.errors import UserError
from hellodd.io import digest, file_metadata
from hellodd.labels import (
    HardLabels,
    LabelStore,
    MeanLogits,
    ModelLabels,
    StoredLabels,
    compress,
    decompress,
    kept_epochs,
    stored_path,
    write_label_stores,
    write_stored_labels,
)

N, C, S = 12, 5, 8


@pytest.fixture
def images():
    return torch.randint(0, 256, (N, 3, S, S), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def _key(images, stream, teacher="t0", dtype="float16", topk=0):
    """What evaluate binds stored labels to (there: file sha256s; here any distinct strings)."""
    from hellodd.io import tensor_sha256

    return {
        "images": tensor_sha256(images),
        "teacher": teacher,
        "seed": stream.seed,
        "batch": stream.batch,
        "dtype": dtype,
        "topk": topk,
    }


class _Linear(torch.nn.Module):
    def __init__(self, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = torch.nn.Linear(3 * S * S, C)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_stream_is_seeded_and_covers_each_epoch():
    s = Stream(N, S, batch_size=4, seed=3)
    assert s.steps_per_epoch == 3
    seen = torch.cat([s.batch_params(0, k)[0] for k in range(3)])
    assert sorted(seen.tolist()) == list(range(N))
    a, b = s.batch_params(1, 2), Stream(N, S, 4, seed=3).batch_params(1, 2)
    assert (
        torch.equal(a[0], b[0]) and torch.equal(a[1].as_tensor(), b[1].as_tensor()) and a[2].lam == b[2].lam
    )


def test_two_ranks_draw_disjoint_shares():
    r0, r1 = Stream(N, S, 6, 0, rank=0, world=2), Stream(N, S, 6, 0, rank=1, world=2)
    a, b = r0.batch_params(0, 0)[0], r1.batch_params(0, 0)[0]
    assert len(a) == len(b) == 3 and not set(a.tolist()) & set(b.tolist())


def test_cutmix_mixes_targets_with_the_images_lambda():
    g = torch.Generator().manual_seed(1)
    mix = sample_cutmix(4, S, 1.0, g)
    x = torch.stack([torch.full((1, S, S), float(i)) for i in range(4)])
    mixed = apply_cutmix(x, mix)
    # the share of each image's own pixels equals lambda, and targets mix with the same lambda and partner
    own = (mixed == x).float().mean((1, 2, 3))
    partner_differs = mix.perm != torch.arange(4)
    assert torch.allclose(own[partner_differs], torch.full_like(own[partner_differs], mix.lam))
    t = mix_targets(torch.eye(4), mix)
    assert torch.allclose(t.sum(1), torch.ones(4))
    for i in range(4):
        if partner_differs[i]:
            assert t[i, i] == pytest.approx(mix.lam) and t[i, mix.perm[i]] == pytest.approx(1 - mix.lam)


def test_every_source_gives_targets_of_the_right_shape(images, tmp_path):
    stream = Stream(N, S, 4, seed=0)
    teacher = _Linear()
    key = _key(images, stream)
    write_stored_labels(tmp_path, key, teacher, images, stream, 2, "float16", "cpu")
    ckey = _key(images, stream, topk=2)
    write_stored_labels(tmp_path / "c", ckey, teacher, images, stream, 1, "float16", "cpu", topk=2)
    sources = [
        HardLabels(C),
        ModelLabels("teacher", teacher),
        ModelLabels("weak-teachers", MeanLogits([_Linear(1), _Linear(2)])),
        ModelLabels("projector", _Linear()),
        StoredLabels(tmp_path, stream, key, C, 2),
        StoredLabels(tmp_path / "c", stream, ckey, C, 1, "compressed"),
    ]
    labels = torch.arange(N) % C
    for src in sources:
        idx, crops, mix = stream.batch_params(1, 2)
        x = render(images, idx, crops, mix, "cpu")
        t = src.targets(x, labels[idx], mix, 1, 2)
        assert t.shape == (4, C) and t.dtype == torch.float32 and not t.requires_grad
        if src.kind == "probs":
            assert torch.allclose(t.sum(1), torch.ones(4)) and (t >= 0).all()


def test_stored_labels_read_back_exactly_what_was_written(images, tmp_path):
    stream = Stream(N, S, 4, seed=5)
    teacher = _Linear()
    key = _key(images, stream, dtype="float32")
    write_stored_labels(tmp_path, key, teacher, images, stream, 2, "float32", "cpu")
    stored = StoredLabels(tmp_path, stream, key, C, 2)
    for e in range(2):
        for k in range(stream.steps_per_epoch):
            idx, crops, mix = stream.batch_params(e, k)
            sidx, scrops, smix = stored.batch_params(e, k)
            assert torch.equal(idx, sidx) and torch.allclose(crops.as_tensor(), scrops.as_tensor())
            assert (
                torch.equal(mix.perm, smix.perm)
                and mix.box == smix.box
                and smix.lam == pytest.approx(mix.lam)
            )
            x = render(images, sidx, scrops, smix, "cpu")
            with torch.no_grad():
                assert torch.equal(stored.targets(x, None, smix, e, k), teacher(x))


def test_stale_stored_labels_are_rewritten_and_never_read(images, tmp_path, capsys):
    """Issue 12, finding 1: labels written for one distilled set were replayed on another."""
    stream = Stream(N, S, 4, seed=0)
    other = images.flip(0).contiguous()  # another distilled set of the same size and classes
    key_a, key_b = _key(images, stream), _key(other, stream)
    assert key_a != key_b
    write_stored_labels(tmp_path, key_a, _Linear(), images, stream, 2, "float32", "cpu")
    # the set changed under the same folder: the writer rewrites every file for the new images
    write_stored_labels(tmp_path, key_b, _Linear(), other, stream, 2, "float32", "cpu")
    assert "2 stored-label file(s) were made from other inputs; rewritten" in capsys.readouterr().out
    assert all(file_metadata(stored_path(tmp_path, e))["key"] == digest(key_b) for e in range(2))
    fresh = StoredLabels(tmp_path, stream, key_b, C, 2)
    idx, crops, mix = fresh.batch_params(0, 0)
    x = render(other, idx, crops, mix, "cpu")
    with torch.no_grad():
        assert torch.equal(fresh.targets(x, None, mix, 0, 0), _Linear()(x))
    # a reader that expects the old set's labels refuses these files instead of training on them
    with pytest.raises(UserError, match="made from other inputs"):
        StoredLabels(tmp_path, stream, key_a, C, 2).batch_params(0, 0)
    # another teacher, dtype or stream seed: rewritten too
    for change in ({"teacher": "t1"}, {"dtype": "float16"}, {"seed": 9}):
        write_stored_labels(tmp_path, {**key_b, **change}, _Linear(1), other, stream, 1, "float16", "cpu")
        assert "were made from other inputs" in capsys.readouterr().out
    # the same inputs again: nothing is rewritten
    write_stored_labels(tmp_path, {**key_b, "seed": 9}, _Linear(1), other, stream, 1, "float16", "cpu")
    assert capsys.readouterr().out == ""


def test_missing_epoch_files_are_refused(images, tmp_path):
    stream = Stream(N, S, 4, seed=0)
    key = _key(images, stream)
    write_stored_labels(tmp_path, key, _Linear(), images, stream, 2, "float16", "cpu")
    with pytest.raises(UserError, match="lack epoch files"):
        StoredLabels(tmp_path, stream, key, C, 3)


@pytest.mark.parametrize("topk", [1, 2, 4, 5, 9])
def test_top_k_compression_keeps_the_largest_logits_and_the_rest_mean(topk):
    logits = torch.randn(6, C, generator=torch.Generator().manual_seed(1)) * 3
    packed = compress(logits, topk, torch.float32)
    back = decompress(packed, slice(0, 6), C)
    if topk >= C:
        assert set(packed) == {"logits"} and torch.equal(back, logits)
        return
    assert packed["classes"].dtype == torch.uint8 and packed["values"].shape == (6, topk)
    top = logits.topk(topk, 1)
    assert torch.equal(back.gather(1, top.indices), top.values)  # kept logits exactly
    assert torch.allclose(back.mean(1), logits.mean(1), atol=1e-5)  # dropped ones replaced by their mean
    assert torch.equal(back.argmax(1), logits.argmax(1))


def test_pruned_epochs_replay_a_kept_epoch(images, tmp_path):
    stream = Stream(N, S, 4, seed=3)
    assert (kept_epochs(300, 0.5), kept_epochs(300, 0.001), kept_epochs(3, 1.0)) == (150, 1, 3)
    key = _key(images, stream, topk=2)
    files = write_stored_labels(tmp_path, key, _Linear(), images, stream, 2, "float16", "cpu", topk=2)
    assert len(files) == 2 and not stored_path(tmp_path, 2).exists()
    stored = StoredLabels(tmp_path, stream, key, C, 2, "compressed")
    for e in range(5):
        a, b = stored.batch_params(e, 1), stream.batch_params(e % 2, 1)
        assert torch.equal(a[0], b[0]) and torch.allclose(a[1].as_tensor(), b[1].as_tensor())
    full = tmp_path / "full"
    write_stored_labels(
        full, _key(images, stream), _Linear(), images, stream, 5, "float16", "cpu"
    )  # 5 epochs
    assert sum(f.stat().st_size for f in files) < sum(f.stat().st_size for f in full.glob("epoch_*"))


def test_one_teacher_pass_writes_full_and_compressed_labels(images, tmp_path):
    stream = Stream(N, S, 4, seed=3)
    calls = []

    class Counting(_Linear):
        def forward(self, x):
            calls.append(len(x))
            return super().forward(x)

    full = LabelStore(tmp_path / "stored", _key(images, stream, dtype="float32"), 3, "float32")
    top2 = LabelStore(tmp_path / "compressed", _key(images, stream, dtype="float32", topk=2), 2, "float32", 2)
    files = write_label_stores([full, top2], Counting(), images, stream, "cpu")
    assert [len(f) for f in files] == [3, 2]
    assert (
        len(calls) == 3 * stream.steps_per_epoch
    )  # one forward per view of the longest store, not per store
    whole = StoredLabels(full.root, stream, full.key, C, 3)
    kept = StoredLabels(top2.root, stream, top2.key, C, 2, "compressed")
    for e, s in ((0, 0), (1, 2)):
        x = torch.zeros(4, 1)
        assert torch.equal(whole.batch_params(e, s)[0], kept.batch_params(e, s)[0])
        logits = whole.targets(x, None, None, e, s)
        rebuilt = kept.targets(x, None, None, e, s)
        top = logits.topk(2, 1)
        assert torch.equal(rebuilt.gather(1, top.indices), top.values)  # the same views, the same teacher
    calls.clear()
    write_label_stores([full, top2], Counting(), images, stream, "cpu")
    assert calls == []  # every file already made from these inputs: nothing recomputed
