"""Bad input: one line naming the problem, exit code 2, no traceback, nothing already written damaged."""

import hashlib
import subprocess

import pytest

from conftest import PYTHON, cli_env
from hellodd.cli import main


def _digest(folder):
    return {
        p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture
def trained(synthetic_run):
    return synthetic_run


BAD = [
    (["teachers", "--preset", "cifar-99"], "unknown preset 'cifar-99'"),
    (
        ["teachers", "--preset", "synthetic", "--set", "teacher.arch=resnet19"],
        "teacher.arch",
    ),
    (["teachers", "--preset", "synthetic", "--set", "teacher.epochs=zero"], "teacher.epochs"),
    (["teachers", "--preset", "synthetic", "--set", "teacher.lr=-1"], "teacher.lr"),
    (["teachers", "--preset", "synthetic", "--set", "teachers.lr=1"], "unknown key 'teachers'"),
    (
        ["teachers", "--preset", "fashion-mnist", "--data", "/nonexistent/fmnist"],
        "/nonexistent/fmnist: folder not found",
    ),
    (["teachers", "--preset", "imagenet-100"], "needs --data PATH"),
    (["teachers", "--preset", "synthetic", "--devices", "0"], "engine.devices"),
    (["teachers", "--preset", "synthetic", "--accelerator", "cuda"], "no CUDA device"),
    (["teachers", "--config", "/nonexistent/config.json"], "config.json: file not found"),
    (["teachers", "--preset", "synthetic", "--set", "distill.adapt_lr_scale=0"], "distill.adapt_lr_scale"),
    (["teachers", "--preset", "synthetic", "--set", "distill.init=folder"], "distill.images"),
    (["teach"], "invalid choice"),
    (["teachers", "--devices", "two"], "invalid int value"),
]


@pytest.mark.parametrize("argv, fragment", BAD)
def test_bad_input_is_one_line_and_exit_2(argv, fragment, tmp_path, capsys, trained):
    before = _digest(trained)
    code = main([*argv, "--out", str(trained)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("hellodd: error:") and err.count("\n") == 1 and fragment in err
    assert _digest(trained) == before


def test_malformed_dataset_folder(tmp_path, capsys):
    from PIL import Image

    (tmp_path / "data" / "train" / "cat").mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(tmp_path / "data" / "train" / "cat" / "0.png")
    code = main(
        [
            "teachers",
            "--preset",
            "imagenet-1k",
            "--data",
            str(tmp_path / "data"),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "no val/ folder" in err and err.count("\n") == 1


def test_damaged_resume_state_and_foreign_config(tmp_path, capsys, trained):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(trained, out)
    (out / "teachers" / "state.pt").write_bytes(b"garbage")
    assert main(["teachers", "--preset", "synthetic", "--out", str(out)]) == 2
    assert "damaged resume state" in capsys.readouterr().err
    (out / "teachers" / "state.pt").unlink()
    bad = tmp_path / "bad.json"
    bad.write_text('{"config": {"teacher": {"warp": 9}}}')
    assert main(["teachers", "--config", str(bad)]) == 2
    assert "unknown key 'teacher.warp'" in capsys.readouterr().err


def test_resume_refuses_a_different_setup(tmp_path, capsys, trained):
    import shutil

    out = tmp_path / "copy"
    shutil.copytree(trained, out)
    before = _digest(out)
    assert (
        main(["teachers", "--preset", "synthetic", "--out", str(out), "--set", "teacher.arch=convnet-d2"])
        == 2
    )
    assert "resume state is from a different setup" in capsys.readouterr().err
    assert _digest(out) == before


def test_console_script_exit_code_without_traceback(tmp_path):
    r = subprocess.run(
        [PYTHON, "-m", "hellodd", "teachers", "--preset", "nope"],
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert (
        r.returncode == 2 and r.stderr.strip().startswith("hellodd: error:") and "Traceback" not in r.stderr
    )


def test_version(capsys):
    from hellodd import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"hellodd {__version__}"
