"""Label sources over one augmentation stream: shapes, sums, exact stored replay, CutMix consistency."""

import pytest
import torch

from hellodd.augment import apply_cutmix, mix_targets, sample_cutmix
from hellodd.errors import UserError
from hellodd.labels import HardLabels, ModelLabels, StoredLabels, Stream, render, write_stored_labels

N, C, S = 12, 5, 8


@pytest.fixture
def images():
    return torch.randint(0, 256, (N, 3, S, S), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


class _Linear(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
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
    write_stored_labels(tmp_path, teacher, images, stream, 2, "float16", "cpu")
    sources = [
        HardLabels(C),
        ModelLabels("teacher", teacher),
        ModelLabels("projector", _Linear()),
        StoredLabels(tmp_path, stream, 2),
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
    write_stored_labels(tmp_path, teacher, images, stream, 2, "float32", "cpu")
    stored = StoredLabels(tmp_path, stream, 2)
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


def test_stored_labels_for_another_setup_are_refused(images, tmp_path):
    write_stored_labels(tmp_path, _Linear(), images, Stream(N, S, 4, seed=0), 2, "float16", "cpu")
    with pytest.raises(UserError, match="written for"):
        StoredLabels(tmp_path, Stream(N, S, 6, seed=0), 2).batch_params(0, 0)
    with pytest.raises(UserError, match="cover 2 epochs, training needs 3"):
        StoredLabels(tmp_path, Stream(N, S, 4, seed=0), 3)
