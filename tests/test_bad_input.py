"""Bad input, tried systematically: every case is one line ``hellodd: error: ...`` naming the file or option,
exit code 2, no traceback, and nothing already written is changed.

Cases tried (property-based ones draw many values each):

Config and command line (``hellodd storage``, which parses and validates the config and writes nothing):
 1. any text as the value of a numeric option (hypothesis): accepted if valid, else names the option
 2. zero or negative sizes for every size option (hypothesis: teacher / projector / evaluate batch sizes,
    epochs, distill.ipc, distill.factor, candidates and crops, evaluate.compressed_topk, data.image_size)
 3. a rate or fraction out of range (hypothesis: lr, frozen_depth, cutmix_prob, crop_min_scale, ...)
 4. a list option given non-numbers, a scalar option given a list (a bare scalar for a list is taken as a
    one-element list)
 5. an unknown config key, and an unknown section
 6. a ``--set`` without ``=``
 7. an unknown preset
 8. an unknown teacher architecture (names ``teacher.arch``)
 9. an unknown student architecture (names ``evaluate.students``)
10. an unknown label source
11. an empty list of seeds
12. an unknown precision
13. ``--devices`` 0 and ``--devices`` not a number
14. an unknown command, and arbitrary argument lists (hypothesis: never a traceback, always exit 0 or 2)
15. a config JSON from another version (unknown fields)
16. a config JSON that is not JSON, and one that is a JSON list
17. ``--config`` naming a missing file
18. ``--clip-checkpoint`` naming a missing file, and one that is not a checkpoint
Data:
19. ``--data`` naming a missing folder
20. an ImageFolder root without ``val/``
21. an empty class folder
22. train/ and val/ with different classes
23. a corrupt image (an image extension, unreadable bytes) in an ImageFolder tree: refused, naming the file,
    when it is read (skipping it would change the dataset silently)
24. a non-image file (``notes.txt``) in a class folder: ignored, as torchvision's ImageFolder ignores every
    file without an image extension (the run succeeds)
25. grey and RGB images mixed in one tree: converted to RGB (the run succeeds)
26. an IPC larger than a class (names ``distill.ipc``)
Checkpoints and run folders:
27. ``teachers --import`` of a checkpoint of another architecture
28. ``teachers --import`` of a checkpoint with another class count
29. ``teachers --import`` of a file that is not a checkpoint
30. a pool whose checkpoint files were moved away
31. ``evaluate`` before ``distill`` (names the missing set folder)
32. ``distill.init=folder`` with a folder that lacks a class
33. ``hellodd verify`` of a folder that is not an export
Writing:
34. a disk that fills up mid-write (simulated ENOSPC): names the file, the previous file is intact
35. output and data paths with spaces and non-ASCII characters: work
"""

from __future__ import annotations

import errno
import hashlib
import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hellodd.cli import main

SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _digest(folder):
    return {
        p.relative_to(folder): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _refused(capsys, argv, fragment=None) -> str:
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("hellodd: error:") and err.count("\n") == 1, err
    if fragment is not None:
        assert fragment in err, err
    return err


def _storage(tmp_path, *extra):
    return ["storage", "--preset", "synthetic", "--out", str(tmp_path / "o"), *extra]


# ------------------------------------------------------------------ 1-3: values, property-based

NUMERIC = [
    "teacher.epochs",
    "teacher.batch_size",
    "teacher.lr",
    "projector.encoder_rank",
    "projector.epochs",
    "projector.lr",
    "distill.ipc",
    "distill.factor",
    "distill.adapt_steps",
    "evaluate.epochs",
    "evaluate.batch_size",
    "evaluate.compressed_topk",
    "data.image_size",
]


@SETTINGS
@given(key=st.sampled_from(NUMERIC), value=st.text(min_size=1, max_size=12))
def test_any_text_for_a_numeric_option(tmp_path, capsys, key, value):
    if "\n" in value or "\r" in value:
        value = value.replace("\n", " ").replace("\r", " ")
    code = main(_storage(tmp_path, "--set", f"{key}={value}"))
    out, err = capsys.readouterr()
    assert code in (0, 2), err  # any other outcome raised out of main(), failing the test
    if code == 2:
        assert err.startswith("hellodd: error:") and err.count("\n") == 1 and key in err
    else:
        assert err == "" and "Label storage" in out


SIZES = [
    "teacher.batch_size",
    "projector.batch_size",
    "evaluate.batch_size",
    "evaluate.epochs",
    "distill.ipc",
    "distill.factor",
    "distill.candidates_per_class",
    "distill.crops_per_image",
    "evaluate.compressed_topk",
    "data.image_size",
]


@SETTINGS
@given(key=st.sampled_from(SIZES), value=st.integers(max_value=0))
def test_zero_or_negative_sizes(tmp_path, capsys, key, value):
    _refused(capsys, _storage(tmp_path, "--set", f"{key}={value}"), key)


RANGES = [
    ("teacher.lr", st.floats(max_value=0, allow_nan=False)),
    ("projector.lr", st.floats(max_value=0, allow_nan=False)),
    ("projector.frozen_depth", st.floats(min_value=1, allow_nan=False, allow_infinity=False)),
    ("projector.cutmix_prob", st.floats(min_value=1.001, allow_nan=False, allow_infinity=False)),
    ("distill.crop_min_scale", st.floats(min_value=1.001, allow_nan=False, allow_infinity=False)),
    ("evaluate.compressed_epoch_fraction", st.floats(max_value=0, allow_nan=False)),
    ("distill.adapt_lr_scale", st.floats(min_value=100.5, allow_nan=False, allow_infinity=False)),
]


@SETTINGS
@given(case=st.sampled_from(range(len(RANGES))), data=st.data())
def test_rates_and_fractions_out_of_range(tmp_path, capsys, case, data):
    key, values = RANGES[case]
    _refused(capsys, _storage(tmp_path, "--set", f"{key}={data.draw(values)!r}"), key)


@SETTINGS
@given(
    argv=st.lists(
        st.sampled_from(["run", "teachers", "--set", "x", "--devices", "-1", "--out", "=", "--"]), max_size=5
    )
)
def test_arbitrary_argument_lists_never_trace_back(capsys, argv):
    if argv and argv[0] in ("run", "teachers") and "--set" not in argv and "--devices" not in argv:
        argv = [argv[0], "--set", "teacher.epochs=0"]  # never start real work here
    code = main(argv)
    out, err = capsys.readouterr()
    assert code in (0, 2), err  # any other outcome raised out of main(), failing the test
    if code == 2:  # a usage error or a refused config: one line
        assert err.startswith("hellodd: error:") and err.count("\n") == 1, err
    else:  # nothing to do but print the usage or --help (no arguments at all is a usage error)
        assert argv and "usage: hellodd" in out, (argv, out)


# ------------------------------------------------------------------ 4-18: hand-made config cases

CONFIG_CASES = [
    (["--set", "evaluate.seeds=[a,b]"], "evaluate.seeds"),
    (["--set", "teacher.epochs=[1,2]"], "teacher.epochs"),
    (["--set", "teacher.colour=red"], "teacher.colour"),
    (["--set", "student.lr=1"], "student"),
    (["--set", "teacher.epochs"], "expected key=value"),
    (["--preset", "cifar-99"], "cifar-99"),
    (["--set", "teacher.arch=resnet19"], "teacher.arch"),
    (["--set", "evaluate.students=[convnet,vgg99]"], "evaluate.students"),
    (["--set", "evaluate.label_sources=[oracle]"], "evaluate.label_sources"),
    (["--set", "evaluate.seeds=[]"], "evaluate.seeds"),
    (["--precision", "fp8"], "engine.precision"),
    (["--devices", "0"], "engine.devices"),
    (["--devices", "two"], "invalid int value"),
]


@pytest.mark.parametrize("extra, fragment", CONFIG_CASES)
def test_config_cases(tmp_path, capsys, extra, fragment):
    argv = _storage(tmp_path, *extra)
    if extra[0] == "--preset":
        argv = ["storage", *extra, "--out", str(tmp_path)]
    _refused(capsys, argv, fragment)


def test_unknown_command(capsys):
    _refused(capsys, ["distil"], "invalid choice")


def test_config_files(tmp_path, capsys):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"config": {"teacher": {"arch": "convnet", "warp_drive": True}}}))
    _refused(capsys, ["storage", "--config", str(other)], "warp_drive")
    broken = tmp_path / "broken.json"
    broken.write_text('{"config": {"teacher": ')
    _refused(capsys, ["storage", "--config", str(broken)], "broken.json")
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    _refused(capsys, ["storage", "--config", str(listed)], "list.json")
    _refused(capsys, ["storage", "--config", str(tmp_path / "missing.json")], "missing.json: file not found")


def test_clip_checkpoints(tmp_path, capsys):
    argv = ["projector", "--preset", "synthetic", "--out", str(tmp_path / "o")]
    argv += ["--set", "projector.random_init=false"]
    _refused(capsys, [*argv, "--clip-checkpoint", str(tmp_path / "nope.pt")], "nope.pt")
    (tmp_path / "o" / "teachers").mkdir(parents=True)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    # without a teacher pool, the stage stops at the pool before it reads the checkpoint
    _refused(capsys, [*argv, "--clip-checkpoint", str(junk)], "no teacher pool")


def test_a_clip_checkpoint_that_is_no_checkpoint_is_refused_by_name(synthetic_run, tmp_path, capsys):
    import shutil

    shutil.copytree(synthetic_run / "teachers", tmp_path / "o" / "teachers")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    argv = ["projector", "--preset", "synthetic", "--out", str(tmp_path / "o")]
    argv += ["--set", "projector.random_init=false", "--clip-checkpoint", str(junk)]
    _refused(capsys, argv, "junk.pt")


# ------------------------------------------------------------------ 19-26: data


def _image_tree(root, classes=("n01440764", "n01443537"), per=(4, 2), mode="RGB"):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in zip(("train", "val"), per):
        for c in classes:
            d = root / split / c
            d.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape = (12, 12, 3) if mode == "RGB" or i % 2 else (12, 12)
                Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(d / f"{i}.png")
    return root


def _teachers_on(root, out):
    return [
        "teachers",
        "--preset",
        "synthetic",
        "--out",
        str(out),
        "--set",
        "data.name=imagefolder",
        "--data",
        str(root),
        "--set",
        "teacher.epochs=1",
        "--set",
        "teacher.pool_epochs=[1]",
        "--set",
        "teacher.batch_size=4",
    ]


def test_data_folders(tmp_path, capsys):
    _refused(capsys, _teachers_on(tmp_path / "nowhere", tmp_path / "o"), "nowhere: folder not found")
    root = _image_tree(tmp_path / "d1")
    for f in (root / "val").rglob("*"):
        if f.is_file():
            f.unlink()
    for d in (root / "val").iterdir():
        d.rmdir()
    (root / "val").rmdir()
    _refused(capsys, _teachers_on(root, tmp_path / "o"), "no val/ folder")
    root = _image_tree(tmp_path / "d2")
    (root / "train" / "n01484850").mkdir()
    _refused(capsys, _teachers_on(root, tmp_path / "o"), "not a valid ImageFolder tree")
    root = _image_tree(tmp_path / "d3")
    _image_tree(root, classes=("n01484850",))
    for f in (root / "val" / "n01484850").iterdir():
        f.unlink()
    (root / "val" / "n01484850").rmdir()
    _refused(capsys, _teachers_on(root, tmp_path / "o"), "different class folders")


def test_a_corrupt_image_is_refused_naming_it(tmp_path, capsys):
    root = _image_tree(tmp_path / "d")
    bad = root / "train" / "n01440764" / "2.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    _refused(capsys, _teachers_on(root, tmp_path / "o"), f"{bad}: not a readable image")


def test_non_image_files_are_ignored_and_grey_mixes_with_rgb(tmp_path, capsys):
    root = _image_tree(tmp_path / "data dir ü", mode="mixed")  # 35: spaces and non-ASCII in the data path
    (root / "train" / "n01440764" / "notes.txt").write_text("not an image")
    out = tmp_path / "rün 1"  # and in the output path
    assert main(_teachers_on(root, out)) == 0
    assert (out / "teachers" / "final.safetensors").is_file()


def test_ipc_larger_than_a_class(tmp_path, capsys):
    out = tmp_path / "o"
    assert main(["teachers", "--preset", "synthetic", "--out", str(out)]) == 0
    capsys.readouterr()
    _refused(
        capsys,
        ["distill", "--preset", "synthetic", "--out", str(out), "--set", "distill.ipc=40"],
        "distill.ipc=40",
    )


# ------------------------------------------------------------------ 27-33: checkpoints and run folders


@pytest.fixture
def pool_run(synthetic_run):
    return synthetic_run


def test_imported_checkpoints_of_another_model(tmp_path, capsys, pool_run):
    import torch

    from hellodd.models import build_model

    other_arch = tmp_path / "r18.pt"
    torch.save(build_model("resnet18", 4, 3, 16).state_dict(), other_arch)
    argv = ["teachers", "--preset", "synthetic", "--out", str(tmp_path / "o"), "--import"]
    _refused(capsys, [*argv, f"{other_arch}@1"], "r18.pt")
    other_classes = tmp_path / "convnet7.pt"
    torch.save(build_model("convnet", 7, 3, 16).state_dict(), other_classes)
    _refused(capsys, [*argv, f"{other_classes}@1"], "convnet7.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    _refused(capsys, [*argv, f"{junk}@1"], "junk.pt")


def test_a_pool_whose_files_were_moved(tmp_path, capsys, pool_run):
    import shutil

    shutil.copytree(pool_run / "teachers", tmp_path / "teachers")
    (tmp_path / "teachers" / "pool").rename(tmp_path / "teachers" / "pool-moved")
    before = _digest(tmp_path)
    _refused(capsys, ["distill", "--preset", "synthetic", "--out", str(tmp_path)], "listed in")
    assert _digest(tmp_path) == before


def test_stages_out_of_order_and_foreign_folders(tmp_path, capsys, pool_run):
    _refused(capsys, ["evaluate", "--preset", "synthetic", "--out", str(tmp_path)], "no distilled set")
    images = tmp_path / "imgs"
    (images / "pattern 0").mkdir(parents=True)
    argv = ["distill", "--preset", "synthetic", "--out", str(pool_run), "--set", "distill.init=folder"]
    before = _digest(pool_run)
    _refused(capsys, [*argv, "--set", f"distill.images={images}"], "no folder for class")
    assert _digest(pool_run) == before
    _refused(capsys, ["verify", str(tmp_path)], str(tmp_path))


# ------------------------------------------------------------------ 34: a full disk


def test_a_full_disk_mid_write_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    from hellodd import io
    from hellodd.errors import UserError

    target = tmp_path / "metrics.json"
    io.write_json(target, {"top1": 80.0})
    before = target.read_bytes()

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", full)
    with pytest.raises(UserError, match="metrics.json: could not be written \\(No space left on device\\)"):
        io.write_json(target, {"top1": 10.0})
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]  # no temporary file left behind
