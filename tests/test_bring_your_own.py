"""Bring your own teachers (torchvision-style checkpoints) and your own distilled images (an ImageFolder)."""

import json

import numpy as np
import pytest
import torch

from hellodd.cli import main
from hellodd.models import load_classifier

pytestmark = pytest.mark.xdist_group("bring-your-own")  # one worker builds the module's checkpoints


@pytest.fixture(scope="module")
def references_checkpoints(tmp_path_factory):
    """The synthetic preset's own pool, re-saved as torchvision references checkpoints and one plain state dict."""
    trained = tmp_path_factory.mktemp("trained")
    assert main(["teachers", "--preset", "synthetic", "--out", str(trained)]) == 0
    pool = json.loads((trained / "teachers" / "pool.json").read_text())
    refs = tmp_path_factory.mktemp("refs")
    for i, entry in enumerate(pool["checkpoints"][:-1]):
        net = load_classifier(trained / "teachers" / entry["file"])[0].net
        state = {f"module.{k}": v for k, v in net.state_dict().items()}  # as saved from a DDP run
        torch.save({"model": state, "epoch": i, "optimizer": {}, "args": None}, refs / f"model_{i}.pth")
    last = load_classifier(trained / "teachers" / "final.safetensors")[0].net
    plain = tmp_path_factory.mktemp("plain") / "final-weights.pt"
    torch.save(last.state_dict(), plain)
    return trained, pool, refs, plain


def test_imported_pool_records_the_same_accuracies(references_checkpoints, tmp_path, capsys):
    trained, pool, refs, plain = references_checkpoints
    assert (
        main(
            ["teachers", "--preset", "synthetic", "--out", str(tmp_path), "--import", str(refs), f"{plain}@9"]
        )
        == 0
    )
    got = json.loads((tmp_path / "teachers" / "pool.json").read_text())
    assert [e["epoch"] for e in got["checkpoints"]] == [
        1.0,
        2.0,
        3.0,
        9.0,
    ]  # references' epoch + 1; PATH@EPOCH
    want = [
        e["top1"] for e in pool["checkpoints"]
    ]  # the same weights, evaluated on the same validation split
    assert [e["top1"] for e in got["checkpoints"]] == pytest.approx(want)
    assert all(len(e["source_sha256"]) == 64 for e in got["checkpoints"])
    a = load_classifier(tmp_path / "teachers" / "final.safetensors")[0]
    b = load_classifier(trained / "teachers" / "final.safetensors")[0]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert "teachers" in capsys.readouterr().out


@pytest.mark.parametrize(
    "make, fragment",
    [
        (
            lambda d: torch.save({"model": {"fc.weight": torch.zeros(3, 3)}, "epoch": 0}, d / "model_0.pth"),
            "does not fit convnet",
        ),
        (lambda d: (d / "model_0.pth").write_bytes(b"garbage"), "not a readable checkpoint"),
        (lambda d: torch.save({"x": [1, 2]}, d / "weights.pt"), "holds no state dict"),
        (lambda d: torch.save({"w": torch.zeros(1)}, d / "weights.pt"), "no epoch"),
    ],
)
def test_bad_checkpoints_are_one_line(tmp_path, capsys, make, fragment):
    (tmp_path / "ck").mkdir()
    make(tmp_path / "ck")
    assert (
        main(
            [
                "teachers",
                "--preset",
                "synthetic",
                "--out",
                str(tmp_path / "o"),
                "--import",
                str(tmp_path / "ck"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err.strip()
    assert fragment in err and err.count("\n") == 0


def test_outside_images_and_imported_teachers_run_to_an_exported_set(
    references_checkpoints, tmp_path, capsys
):
    from PIL import Image

    _, _, refs, plain = references_checkpoints
    rng = np.random.default_rng(0)
    folder = tmp_path / "their-set"
    for c in range(4):  # the synthetic classes are "pattern 0".."pattern 3": folder names matched by name
        (folder / f"pattern_{c}").mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(
                folder / f"pattern_{c}" / f"{i}.png"
            )
    out = tmp_path / "run"
    common = ["--preset", "synthetic", "--out", str(out)]
    own = [*common, "--set", "distill.init=folder", "--set", f"distill.images={folder}"]
    assert main(["teachers", *common, "--import", str(refs), f"{plain}@9"]) == 0
    assert main(["projector", *common]) == 0
    assert main(["distill", *own]) == 0
    assert main(["evaluate", *own, "--set", "evaluate.label_sources=hard,projector"]) == 0
    assert main(["export", *own, "--to", str(tmp_path / "exp")]) == 0
    m = json.loads((tmp_path / "exp" / "manifest.json").read_text())
    assert m["variant"] == "folder" and m["count"] == 8 and "made elsewhere" in m["source"]
    assert set(m["results"]["per_source"]) == {"hard", "projector"}
    import hellodd

    ds = hellodd.load(tmp_path / "exp")
    assert ds.images.shape == (8, 3, 16, 16)
    (folder / "pattern_3" / "1.png").unlink()
    assert main(["distill", *own]) == 2
    assert "1 to 2 images per class, not distill.ipc=2" in capsys.readouterr().err
    (folder / "pattern_3" / "1.png").write_bytes(b"not an image")
    assert main(["distill", *own]) == 2
    assert "1.png: not a readable image" in capsys.readouterr().err
