import pytest
import torch

from hellodd import engine


@pytest.mark.parametrize("n, world", [(10, 1), (10, 3), (7, 2), (1, 2)])
def test_shard_sampler_covers_every_index_and_pads_evenly(n, world):
    shards = [list(engine.ShardSampler(n, r, world, seed=1)) for r in range(world)]
    assert len({len(s) for s in shards}) == 1
    assert set().union(*map(set, shards)) == set(range(n))
    unpadded = [list(engine.ShardSampler(n, r, world, shuffle=False, pad=False)) for r in range(world)]
    assert sorted(i for s in unpadded for i in s) == list(range(n))


def test_shard_sampler_is_seeded_per_epoch_and_resumes_mid_epoch():
    s = engine.ShardSampler(20, 0, 1, seed=5)
    s.set_position(2)
    full = list(s)
    s.set_position(2, start_index=7)
    assert list(s) == full[7:] and len(s) == 13
    s.set_position(3)
    assert list(s) != full


def test_step_generator_replays():
    a = torch.rand(3, generator=engine.step_generator(0, 5, 1))
    b = torch.rand(3, generator=engine.step_generator(0, 5, 1))
    c = torch.rand(3, generator=engine.step_generator(0, 6, 1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_launcher_mismatch_is_an_error(monkeypatch):
    from hellodd.config import EngineConfig
    from hellodd.errors import UserError

    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "x")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="launcher started 2 processes per node"):
        engine.make_fabric(EngineConfig(accelerator="cpu", devices=4))


def test_atomic_writes_follow_the_umask(tmp_path):
    import os

    from hellodd.io import write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        os.umask(0o077)
        write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600


def test_compile_frozen_labels_like_eager_and_keeps_freezing_to_itself():
    import torch._inductor.config as inductor_config
    from torch import nn

    from hellodd.engine import compile_frozen

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Flatten(), nn.LazyLinear(4)
    )
    x = torch.rand(6, 3, 8, 8)
    model(x)
    model.eval().requires_grad_(False)
    with torch.inference_mode():
        want = model(x)
        got = compile_frozen(model)(x)
    assert got.shape == want.shape and torch.allclose(got, want, atol=1e-4, rtol=1e-4)
    assert inductor_config.freezing is False  # students compiled later are never frozen
