"""The projector: zero-shot equivalence, adapters, merge, checkpoint loading, bad files (tiny CLIP, CPU)."""

import pytest
import torch
import torch.nn.functional as F

from hellodd.config import ProjectorConfig
from hellodd.errors import UserError
from hellodd.projector import (
    adapter_tensors,
    add_adapters,
    build_base,
    load_projector,
    lora_targets,
    merged_for_inference,
    prompt_templates,
    save_adapters,
)
from hellodd.projector.clip import _register_model_configs
from hellodd.projector.transfer import agreement

TINY = "clip:hellodd-RN-tiny"
CLASSES = ["cat", "dog", "truck"]


def tiny(**kw) -> ProjectorConfig:
    args = {"base": TINY, "random_init": True, "image_size": 32, "encoder_rank": 4, "head_rank": 2, **kw}
    return ProjectorConfig(**args)


def _perturb(p, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, t in p.named_parameters():
            if "lora_" in n:
                t.add_(0.05 * torch.randn(t.shape, generator=g))


def test_prompts_are_the_papers_seven():
    t = prompt_templates()
    assert len(t) == 7 and "itap of a {}." in t and "a photo of the small {}." in t


def test_text_head_equals_open_clip_zero_shot_classifier(tmp_path):
    import open_clip

    p = build_base(tiny(), CLASSES, tmp_path)
    _register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("hellodd-RN-tiny", pretrained=None).eval()
    w = open_clip.build_zero_shot_classifier(
        model, open_clip.get_tokenizer("hellodd-RN-tiny"), CLASSES, prompt_templates()
    )
    x = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        ref = model.logit_scale.exp() * F.normalize(model.encode_image(p.prepare(x)), dim=-1) @ w
        assert torch.allclose(p(x), ref, atol=1e-5)
    assert list(tmp_path.glob("text-head-*.safetensors"))  # cached for the next build
    assert torch.allclose(build_base(tiny(), CLASSES, tmp_path).head.weight, p.head.weight)


def test_every_trainable_parameter_gets_a_gradient_and_only_adapters_train():
    p = build_base(tiny(), CLASSES)
    with (
        torch.no_grad()
    ):  # open_clip zero-initialises each block's last BN (a random tower's branches are dead)
        for m in p.encoder.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(1.0)
    targets = add_adapters(p, 4, 2)
    assert "head" in targets and any("attnpool.q_proj" in t for t in targets)
    p(torch.rand(2, 1, 28, 28)).square().sum().backward()  # grey 28-px input is adapted inside
    trainable = {n: t for n, t in p.named_parameters() if t.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all(t.grad is not None for t in trainable.values())
    # B starts at zero, so at step 0 only the B factors have non-zero gradients, and all of them do
    silent = [n for n, t in trainable.items() if "lora_B" in n and not t.grad.abs().sum() > 0]
    assert not silent, silent


def test_training_steps_leave_the_base_unchanged():
    p = build_base(tiny(), CLASSES)
    add_adapters(p, 4, 2)
    frozen = {n: t.clone() for n, t in p.state_dict().items() if "lora_" not in n}
    opt = torch.optim.AdamW([t for t in p.parameters() if t.requires_grad], lr=1e-2)
    before = adapter_tensors(p)
    before = {k: v.clone() for k, v in before.items()}
    for _ in range(3):
        loss = F.cross_entropy(p.train()(torch.rand(4, 3, 32, 32)), torch.tensor([0, 1, 2, 0]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = p.state_dict()
    assert all(torch.equal(frozen[n], after[n]) for n in frozen)
    assert any(not torch.equal(before[k], v) for k, v in adapter_tensors(p).items())


@pytest.mark.parametrize("frozen_depth", [0.0, 0.5])
def test_adapter_file_round_trip_and_merge(tmp_path, frozen_depth):
    cfg = tiny(frozen_depth=frozen_depth)
    p = build_base(cfg, CLASSES, tmp_path / "cache")
    every = lora_targets(p)
    targets = add_adapters(p, cfg.encoder_rank, cfg.head_rank, cfg.frozen_depth)
    # input-side layers are left out: the adapted layers are the last (1 - frozen_depth) of them, in order
    assert [t for t in targets if t != "head"] == every[round(frozen_depth * len(every)) :]
    _perturb(p)
    path = tmp_path / "adapters.safetensors"
    n = save_adapters(path, p, cfg)
    assert n == sum(t.numel() for t in adapter_tensors(p).values())
    q = load_projector(path)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(q(x), p.eval()(x), atol=1e-6)
        m = merged_for_inference(q)
        assert torch.allclose(m(x), q(x), atol=1e-4)
        assert not any(t.requires_grad for t in m.parameters())
    assert q.classes == CLASSES
    # the file holds adapters only: far smaller than the tower it adapts
    tower = sum(t.numel() for n, t in q.state_dict().items() if "lora_" not in n)
    assert n < tower


@pytest.mark.parametrize("dtype, tol", [("float16", 1e-2), ("bfloat16", 5e-2)])
def test_adapters_saved_in_half_precision_load_back_to_float32(tmp_path, dtype, tol):
    cfg = tiny()
    p = build_base(cfg, CLASSES, tmp_path / "cache")
    add_adapters(p, cfg.encoder_rank, cfg.head_rank)
    _perturb(p)
    full, half = tmp_path / "fp32.safetensors", tmp_path / f"{dtype}.safetensors"
    save_adapters(full, p, cfg)
    save_adapters(half, p, tiny(adapter_dtype=dtype))
    # half the tensor bytes; the JSON headers differ by a few bytes (dtype names, offsets)
    body = sum(t.numel() for t in adapter_tensors(p).values()) * 2
    assert abs(full.stat().st_size - half.stat().st_size - body) < 200
    q = load_projector(half)
    assert all(t.dtype == torch.float32 for t in adapter_tensors(q).values())
    want = {k: t.to(getattr(torch, dtype)).float() for k, t in adapter_tensors(p).items()}
    assert all(torch.equal(adapter_tensors(q)[k], want[k]) for k in want)
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(q(x), p.eval()(x), atol=tol * p(x).abs().max().item())


def test_the_weak_teacher_window_follows_the_datas_class_count(folder_root):
    from hellodd.config import Config, DataConfig, DistillConfig
    from hellodd.data import load_data
    from hellodd.projector.transfer import weak_teachers

    # an ImageFolder of 3 classes: the rule's window sits early in the trajectory (1000 classes: half-way)
    data = DataConfig(name="imagefolder", root=str(folder_root), image_size=16)
    cfg = Config(data=data, distill=DistillConfig(ipc=1), projector=ProjectorConfig(num_teachers=3))
    pool = {"checkpoints": [{"epoch": e} for e in range(10, 0, -1)]}  # epoch 10 is the final model
    assert [t["epoch"] for t in weak_teachers(pool, cfg)] == [1, 2, 3]  # counted from the class folders
    for n, window in ((load_data(data).num_classes, [1, 2, 3]), (1000, [4, 5, 6])):  # as the stages pass it
        assert [t["epoch"] for t in weak_teachers(pool, cfg, n)] == window


def test_users_checkpoint_file_is_loaded(tmp_path):
    import open_clip

    _register_model_configs()
    torch.manual_seed(123)
    model = open_clip.create_model("hellodd-RN-tiny", pretrained=None)
    ckpt = tmp_path / "tiny-clip.pt"
    torch.save(model.state_dict(), ckpt)
    p = build_base(tiny(random_init=False, checkpoint=str(ckpt)), CLASSES, tmp_path)
    assert p.info.pretrained and len(p.info.checkpoint_sha256) == 64
    assert torch.equal(p.encoder.conv1.weight, model.visual.conv1.weight)
    with pytest.raises(UserError, match="needs weights: pass --clip-checkpoint"):
        build_base(tiny(random_init=False), CLASSES)
    with pytest.raises(UserError, match="file not found"):
        build_base(tiny(random_init=False, checkpoint=str(tmp_path / "none.pt")), CLASSES)
    torch.save({"something": torch.zeros(3)}, tmp_path / "wrong.pt")
    with pytest.raises(UserError, match="wrong.pt: not a clip:hellodd-RN-tiny checkpoint"):
        build_base(tiny(random_init=False, checkpoint=str(tmp_path / "wrong.pt")), CLASSES)


def test_a_clip_checkpoint_is_read_by_one_loader_whose_error_is_shown(tmp_path):
    import open_clip

    _register_model_configs()
    torch.manual_seed(7)
    model = open_clip.create_model("hellodd-RN-tiny", pretrained=None).eval()
    torch.save(model.state_dict(), tmp_path / "tiny.pt")
    whole = (tmp_path / "tiny.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(whole[: len(whole) // 2])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    for name, reason in (("junk.pt", "not a file of tensors: "), ("cut.pt", "PytorchStreamReader failed")):
        with pytest.raises(
            UserError, match=rf"{name}: not a clip:hellodd-RN-tiny checkpoint \({reason}"
        ) as e:
            build_base(tiny(random_init=False, checkpoint=str(tmp_path / name)), CLASSES)
        assert "\n" not in str(e.value) and "weights_only" not in str(
            e.value
        )  # torch's advice to unpickle code
    # an OpenAI-style release file: the whole model as a TorchScript archive (its text mask a constant)
    model.attn_mask = model._buffers.pop("attn_mask")
    x, text = torch.randn(1, 3, 32, 32), torch.zeros(1, 77, dtype=torch.long)
    torch.jit.trace(model, (x, text), check_trace=False, strict=False).save(str(tmp_path / "openai.pt"))
    p = build_base(tiny(random_init=False, checkpoint=str(tmp_path / "openai.pt")), CLASSES)
    assert torch.equal(p.encoder.conv1.weight, model.visual.conv1.weight)


def test_damaged_or_foreign_adapter_files(tmp_path):
    from hellodd.io import save_tensors

    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(UserError, match="junk.safetensors"):
        load_projector(tmp_path / "junk.safetensors")
    save_tensors(tmp_path / "other.safetensors", {"x": torch.zeros(2)}, {"format": "something-else"})
    with pytest.raises(UserError, match="not a hellodd projector adapter file"):
        load_projector(tmp_path / "other.safetensors")


def test_agreement_metric():
    a = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    assert agreement(a, a) == {
        "top1_agreement": 100.0,
        "kl": pytest.approx(0.0, abs=1e-6),
        "logit_mse": 0.0,
    }
    r = agreement(a, a.flip(1))
    assert r["top1_agreement"] == 0.0 and r["kl"] > 1.0
    assert r["logit_mse"] == pytest.approx(4.0)  # every logit off by 2


def test_attention_pool_resized_for_other_input_sizes():
    p = build_base(tiny(image_size=64), CLASSES)
    assert p.encoder.attnpool.positional_embedding.shape[0] == (64 // 32) ** 2 + 1
    assert p(torch.rand(2, 3, 64, 64)).shape == (2, 3)


@pytest.mark.parametrize("prob", [0.0, 1.0])
def test_transfer_batch_cutmix_relabels_mixed_images(prob):
    from hellodd.projector.transfer import transfer_batch
    from hellodd.tasks import TASKS

    x = (torch.arange(6).view(6, 1, 1, 1) * 40).expand(6, 1, 16, 16).to(torch.uint8)  # image i is all 40*i
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    pcfg = ProjectorConfig(augment="none", cutmix_prob=prob)
    xa, ya = transfer_batch(TASKS["classification"], x, y, pcfg, 3, torch.Generator().manual_seed(3))
    assert xa.dtype == torch.float32 and xa.shape == (6, 1, 16, 16)
    if prob == 0:
        assert torch.equal(ya, y) and torch.equal(xa, x.float() / 255)
        return
    assert ya.shape == (6, 3) and torch.allclose(ya.sum(1), torch.ones(6))
    # the CE target of each mixed image is the area share of each source image's class
    expected = torch.zeros(6, 3)
    for i in range(6):
        src = (xa[i] * 255 / 40).round().long().flatten()
        for j in src.unique().tolist():
            expected[i, y[j]] += (src == j).float().mean()
    assert torch.allclose(ya, expected, atol=1e-6)
    assert (expected.max(1).values < 1).any()  # the box really moved pixels between images


def test_adapters_refuse_a_base_checkpoint_with_another_hash(tmp_path):
    import open_clip

    _register_model_configs()
    torch.manual_seed(0)
    model = open_clip.create_model("hellodd-RN-tiny", pretrained=None)
    ckpt, other = tmp_path / "base.pt", tmp_path / "other.pt"
    torch.save(model.state_dict(), ckpt)
    pcfg = tiny(random_init=False, checkpoint=str(ckpt))
    p = build_base(pcfg, CLASSES, tmp_path)
    add_adapters(p, pcfg.encoder_rank, pcfg.head_rank)
    _perturb(p)
    save_adapters(tmp_path / "a.safetensors", p, pcfg)
    moved = tmp_path / "moved.pt"
    ckpt.rename(moved)  # another machine: the recorded path is gone, the user names the file
    with pytest.raises(UserError, match="needs its base checkpoint"):
        load_projector(tmp_path / "a.safetensors", cache_dir=tmp_path)
    q = load_projector(tmp_path / "a.safetensors", cache_dir=tmp_path, checkpoint=moved)
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(q(x), p.eval()(x), atol=1e-5)
    with torch.no_grad():
        model.visual.conv1.weight.add_(0.01)
    torch.save(model.state_dict(), other)
    with pytest.raises(UserError, match="other.pt: not the base checkpoint"):
        load_projector(tmp_path / "a.safetensors", cache_dir=tmp_path, checkpoint=other)


def test_teacher_logits_from_models_or_one_averaging_module():
    from hellodd.labels import MeanLogits
    from hellodd.projector.transfer import teacher_logits

    torch.manual_seed(0)
    models = [torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)]
    x = torch.randn(5, 4)
    want = (models[0](x) + models[1](x)) / 2
    assert torch.allclose(teacher_logits(models, x), want, atol=1e-6)
    assert torch.allclose(teacher_logits(MeanLogits(models), x), want, atol=1e-6)


@pytest.mark.parametrize("size", [64, 65, 96])
def test_folded_same_padding_gives_the_same_features(size):
    """EfficientNet-Lite's pad-then-convolve layers become plain convolutions: the 12 symmetric (stride-1)
    ones when the base is built, the 5 stride-2 ones, with a zero tap, for inference.  Same features as the
    package's network at 64 and 96 px (the demo's) and at a size of other parity; building draws no random numbers."""
    from efficientnet_lite_pytorch import EfficientNet

    from hellodd.projector.efficientnet import EfficientNetFeatures, fold_same_padding

    def pads(m):
        return sum(isinstance(x, torch.nn.ZeroPad2d) for x in m.modules())

    torch.manual_seed(0)
    net = EfficientNet.from_name("efficientnet-lite0").eval()
    with torch.no_grad():  # BatchNorm statistics away from the identity, so every layer matters
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.rand(4, 3, size, size)
    with torch.no_grad():
        reference = net.extract_features(x).mean((2, 3))
    assert pads(net) == 17
    features = EfficientNetFeatures(net).to(memory_format=torch.channels_last)
    assert pads(features) == 5
    rng = torch.get_rng_state()
    with torch.no_grad():
        built = features(x)
        assert fold_same_padding(features) == 5
        folded = features(x)
    assert pads(features) == 0
    assert torch.equal(torch.get_rng_state(), rng)  # a LoRA initialised after building draws as before
    kernels = sorted({m.kernel_size for m in features.modules() if isinstance(m, torch.nn.Conv2d)})
    assert kernels == [(1, 1), (3, 3), (4, 4), (5, 5), (6, 6)]  # stride-2 3x3 and 5x5 grew a zero tap
    torch.testing.assert_close(built, reference, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(folded, reference, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("base", ["efficientnet-lite0", "efficientnet-lite2"])
def test_efficientnet_bases_load_their_packaged_imagenet_weights(tmp_path, base):
    """Each EfficientNet-Lite base loads its own package's weights (hash recorded), caches its mapped head under
    a name of its own, and labels images; Lite0's weights id keeps the name existing caches were written with."""
    from hellodd.io import sha256
    from hellodd.projector.bases import head_file, weights_id
    from hellodd.projector.efficientnet import EFFICIENTNET_BASES, _efficientnet_weights

    p = build_base(ProjectorConfig(base=base, image_size=64), CLASSES, cache_dir=tmp_path)
    assert p.info.pretrained and p.info.weights_sha256 == sha256(_efficientnet_weights(base))
    wid = weights_id(base, False, 0, None)
    assert wid.startswith(base + "-") and p.info.head_file == head_file(base, wid, CLASSES)
    assert (tmp_path / p.info.head_file).is_file()
    others = {head_file(b, weights_id(b, False, 0, None), CLASSES) for b in EFFICIENTNET_BASES}
    assert len(others) == len(EFFICIENTNET_BASES)
    assert weights_id("efficientnet-lite0", False, 0, None) == "efficientnet-lite0-57934424"
    with torch.no_grad():
        logits = p(torch.rand(2, 3, 64, 64))
    assert logits.shape == (2, len(CLASSES)) and torch.isfinite(logits).all()


def test_an_unknown_base_is_one_line_naming_the_choices():
    with pytest.raises(UserError, match="efficientnet-lite2"):
        build_base(ProjectorConfig(base="efficientnet-lite9"), CLASSES)
