import pytest
import torch

from hellodd.errors import UserError
from hellodd.models import build_model, load_classifier, save_classifier

# (arch, channels, size): every architecture of the paper's cross-architecture table at a small input
CASES = [
    ("convnet", 1, 28),
    ("convnet-d4", 3, 32),
    ("resnet18", 1, 28),
    ("resnet18", 3, 64),
    ("shufflenet_v2_x0_5", 1, 28),
    ("mobilenet_v2", 1, 28),
    ("efficientnet_b0", 3, 32),
    ("swin_v2_t", 1, 28),
    ("vgg11", 1, 28),
    ("vit_b_16", 3, 32),
]


@pytest.mark.parametrize("arch, channels, size", CASES)
def test_factory_builds_forward_and_backward(arch, channels, size):
    torch.manual_seed(0)
    model = build_model(arch, 7, channels, size)
    x = torch.rand(2, channels, size, size)
    out = model(x)
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_small_input_resnet_keeps_resolution():
    m = build_model("resnet18", 10, 1, 28)
    assert m.net.conv1.kernel_size == (3, 3) and m.net.conv1.stride == (1, 1)
    assert isinstance(m.net.maxpool, torch.nn.Identity)
    assert build_model("resnet18", 10, 3, 224).net.conv1.kernel_size == (7, 7)


def test_unknown_arch_is_user_error():
    with pytest.raises(UserError, match="unknown architecture 'resnet19'"):
        build_model("resnet19", 10, 3, 32)


def test_checkpoint_round_trip_and_bad_files(tmp_path):
    m = build_model("convnet-d2-w16", 5, 1, 16)
    save_classifier(tmp_path / "m.safetensors", m, epoch=1.5)
    back, meta = load_classifier(tmp_path / "m.safetensors")
    x = torch.rand(3, 1, 16, 16)
    assert torch.equal(back(x), m.eval()(x)) and meta["epoch"] == 1.5
    (tmp_path / "bad.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    with pytest.raises(UserError, match="bad.safetensors"):
        load_classifier(tmp_path / "bad.safetensors")
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cut.safetensors: not a readable safetensors"):
        load_classifier(tmp_path / "cut.safetensors")
