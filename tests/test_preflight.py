"""The plan is checked before the first stage: an ImageNet-shaped run that would fail in its second, third or
fourth stage fails in seconds, with one line and exit code 2, before anything is written."""

from __future__ import annotations

import io
import time

import pytest
from PIL import Image

from hellodd.classnames import imagenet_table
from hellodd.cli import main


@pytest.fixture(scope="module")
def imagenet(tmp_path_factory):
    """ImageNet's layout: the 1000 WordNet-ID class folders in train/ and val/, two tiny images per class in
    train/ and one in val/."""
    root = tmp_path_factory.mktemp("imagenet")
    png = io.BytesIO()
    Image.new("RGB", (8, 8), (120, 60, 30)).save(png, format="PNG")
    for wnid in imagenet_table():
        for split, n in (("train", 2), ("val", 1)):
            folder = root / split / wnid
            folder.mkdir(parents=True)
            for i in range(n):
                (folder / f"{wnid}_{i}.png").write_bytes(png.getvalue())
    return root


def _fails_first(capsys, argv, out, fragment):
    t0 = time.perf_counter()
    code = main(argv)
    seconds = time.perf_counter() - t0
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("hellodd: error:") and err.count("\n") == 1, err
    assert fragment in err, err
    assert seconds < 10, seconds
    assert not out.exists()  # no stage ran, no lock was taken: nothing written


def test_a_clip_base_without_weights_fails_before_the_teachers(imagenet, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--preset", "imagenet-1k", "--data", str(imagenet), "--out", str(out)]
    _fails_first(capsys, argv, out, "needs weights: pass --clip-checkpoint PATH")


def test_a_window_the_pool_does_not_keep_fails_before_the_teachers(imagenet, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--preset", "imagenet-1k", "--data", str(imagenet), "--out", str(out)]
    argv += ["--set", "projector.random_init=true", "--set", "teacher.pool_epochs=[10,20]"]
    _fails_first(capsys, argv, out, "no pool checkpoint at epoch(s) [15.0, 25.0")


def test_more_images_per_class_than_the_data_has_fails_before_the_teachers(imagenet, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["run", "--preset", "imagenet-1k", "--data", str(imagenet), "--out", str(out)]
    argv += ["--set", "projector.random_init=true", "--ipc", "1", "10"]
    _fails_first(
        capsys, argv, out, "--set distill.ipc=1: class 0 has 2 training images, fewer than IPC x factor^2 = 4"
    )


def test_a_stage_command_checks_its_own_needs(synthetic_run, tmp_path, capsys):
    """``hellodd projector`` on an existing pool: a window its pool lacks is refused before the transfer."""
    import shutil

    shutil.copytree(synthetic_run / "teachers", tmp_path / "teachers")
    before = sorted(p.name for p in (tmp_path / "teachers").iterdir())
    code = main(
        [
            "projector",
            "--preset",
            "synthetic",
            "--out",
            str(tmp_path),
            "--set",
            "projector.teacher_epochs=[0.7]",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "no pool checkpoint at epoch(s) [0.7]" in err and "pool.json" in err, err
    assert sorted(p.name for p in (tmp_path / "teachers").iterdir()) == before
    assert not (tmp_path / "projector").exists()
