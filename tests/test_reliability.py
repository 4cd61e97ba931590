"""Kills, pre-emption, two writers on one folder, and damaged artefacts (synthetic preset).

Every stage killed with SIGKILL at a random step and run again with the same command ends with the outputs of an
uninterrupted run: teachers, the update and the view adaptation in test_teachers / test_distill; the
projector's transfer, RDED selection, stored-label writing and evaluation here.  SIGTERM writes a checkpoint
and exits with one line (code 143).  A second run on a folder in use is refused; a dead holder's lock is
taken over.  A truncated or byte-flipped file of every artefact kind is refused with a line naming it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import socket
import subprocess
import time

import pytest
import torch

from conftest import KILL_SEED, PYTHON, cli_env
from hellodd.cli import main
from hellodd.errors import UserError
from hellodd.io import load_state, load_tensors, read_json

RNG = random.Random(KILL_SEED)  # kill steps: seeded (conftest), each assertion message carries seed and step


def _cmd(stage, out, *extra):
    return [PYTHON, "-m", "hellodd", stage, "--preset", "synthetic", "--out", str(out), *extra]


@pytest.fixture
def base(synthetic_run):
    return synthetic_run


def _copy(base, to, stages):
    for stage in stages:
        shutil.copytree(base / stage, to / stage)


def _killed_then_resumed(cmd, at):
    killed = subprocess.run(cmd, env=cli_env(HELLODD_DIE_AT_STEP=at), timeout=300)
    assert killed.returncode == -9, (KILL_SEED, at)
    return subprocess.run(cmd, env=cli_env(), timeout=300, capture_output=True, text=True)


def _same_tensors(a, b):
    (x, _), (y, _) = load_tensors(a), load_tensors(b)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_killed_projector_transfer_resumes_to_the_same_adapters(base, tmp_path):
    outs = [tmp_path / "killed", tmp_path / "ref"]
    for out in outs:
        _copy(base, out, ["teachers"])
    more = ["--set", "projector.epochs=3"]  # 18 steps, checkpoints every 6
    at = RNG.randint(7, 17)
    resumed = _killed_then_resumed(_cmd("projector", outs[0], *more), at)
    said = f"resuming at step {6 * ((at - 1) // 6)}/18"
    assert resumed.returncode == 0 and said in resumed.stdout, (KILL_SEED, at)
    assert main(_cmd("projector", outs[1], *more)[3:]) == 0  # the uninterrupted reference, in this process
    assert _same_tensors(*(o / "projector" / "rule-ipc2" / "adapters.safetensors" for o in outs))


def test_killed_selection_resumes_to_the_same_initial_images(base, tmp_path):
    outs = [tmp_path / "killed", tmp_path / "ref"]
    for out in outs:
        _copy(base, out, ["teachers", "projector"])
    more = ["--set", "distill.update=false", "--set", "distill.adapt_steps=0"]
    killed_dir = outs[0] / "distill" / "ipc2-rded"
    at = RNG.randint(1, 3)  # of 4 classes
    killed = subprocess.run(_cmd("distill", outs[0], *more), env=cli_env(HELLODD_DIE_AT_STEP=at), timeout=300)
    assert killed.returncode == -9, (KILL_SEED, at)
    assert len(list((killed_dir / "init-classes").iterdir())) == at, (KILL_SEED, at)
    assert main(_cmd("distill", outs[0], *more)[3:]) == 0  # resumed, in this process
    assert not (killed_dir / "init-classes").exists()  # folded into init.safetensors
    assert main(_cmd("distill", outs[1], *more)[3:]) == 0
    assert _same_tensors(*(o / "distill" / "ipc2-rded" / "init.safetensors" for o in outs))


@pytest.mark.parametrize(
    "source, first, last",
    [
        ("stored", 1, 5),  # stored-label writing: killed after one of its 6 epoch files
        ("teacher", 3, 11),  # evaluation: killed at one of 12 steps (6 epochs of 2), checkpoints every epoch
    ],
)
def test_killed_evaluation_resumes_to_the_same_result(base, tmp_path, source, first, last):
    at = RNG.randint(first, last)
    outs = [tmp_path / "killed", tmp_path / "ref"]
    for out in outs:
        _copy(base, out, ["teachers", "projector", "distill"])
    more = ["--set", f"evaluate.label_sources=[{source}]", "--set", "evaluate.seeds=[0]"]
    more += ["--set", "evaluate.epochs=6"]
    resumed = _killed_then_resumed(_cmd("evaluate", outs[0], *more), at)
    assert resumed.returncode == 0, (KILL_SEED, at, resumed.stderr[-1500:])
    if source == "teacher":  # the step-`at` kill comes before that epoch's checkpoint
        assert f"resuming at epoch {(at - 1) // 2}/6" in resumed.stdout, (KILL_SEED, at)
    assert main(_cmd("evaluate", outs[1], *more)[3:]) == 0
    rows = [json.loads((o / "evaluate" / "ipc2-rded-update" / "results.json").read_text()) for o in outs]
    assert [(r["score"], r["final_loss"]) for r in rows[0]] == [
        (r["score"], r["final_loss"]) for r in rows[1]
    ]
    if source == "stored":
        files = [
            sorted((o / "evaluate" / "ipc2-rded-update" / "stored-labels").rglob("*.safetensors"))
            for o in outs
        ]
        assert len(files[0]) == 6  # the same labels (the header's key order is safetensors' own, not ours)
        assert all(_same_tensors(a, b) for a, b in zip(*files))


def test_finished_evaluation_runs_are_kept_and_bound_to_their_inputs(base, tmp_path, capsys):
    _copy(base, tmp_path, ["teachers", "projector", "distill"])
    args = ["evaluate", "--preset", "synthetic", "--out", str(tmp_path), "--set", "evaluate.seeds=[0]"]
    args += ["--set", "evaluate.label_sources=[hard,teacher]"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert main(args) == 0
    again = capsys.readouterr().out
    assert first.count("(finished earlier)") == 0 and again.count("(finished earlier)") == 2
    assert main([*args, "--set", "evaluate.lr=0.002"]) == 0  # another setting: trained again
    assert capsys.readouterr().out.count("(finished earlier)") == 0


def test_sigterm_writes_a_checkpoint_and_exits_with_one_line(base, tmp_path):
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    stopped = subprocess.run(
        _cmd("teachers", cut),
        env=cli_env(HELLODD_DIE_AT_STEP=5, HELLODD_DIE_SIGNAL="TERM"),
        timeout=300,
        capture_output=True,
        text=True,
    )
    assert stopped.returncode == 143
    lines = [line for line in stopped.stderr.splitlines() if line.startswith("hellodd:")]
    assert lines == [
        f"hellodd: SIGTERM received: teachers stopped at step 5/12 after writing {cut / 'teachers' / 'state.pt'}; "
        "run the same command to resume from there"
    ]
    assert "Traceback" not in stopped.stderr and load_state(cut / "teachers" / "state.pt")["step"] == 5
    resumed = subprocess.run(
        _cmd("teachers", cut), env=cli_env(), timeout=300, capture_output=True, text=True
    )
    assert resumed.returncode == 0 and "resuming at step 5/12" in resumed.stdout
    assert main(_cmd("teachers", ref)[3:]) == 0
    assert _same_tensors(ref / "teachers" / "final.safetensors", cut / "teachers" / "final.safetensors")


def test_a_second_run_on_a_folder_in_use_is_refused(tmp_path, capsys):
    first = subprocess.Popen(
        _cmd("teachers", tmp_path, "--set", "teacher.epochs=40", "--set", "teacher.pool_epochs=[40]"),
        env=cli_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        lock = tmp_path / ".hellodd.lock"
        for _ in range(600):
            if lock.is_file() and lock.read_text():
                break
            time.sleep(0.1)
        assert main(["distill", "--preset", "synthetic", "--out", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"hellodd: error: --out {tmp_path}: in use by pid {first.pid} on ")
        assert "'hellodd teachers'" in err and len(err.splitlines()) == 1
    finally:
        first.kill()
        first.wait()
    # its holder is gone (SIGKILL leaves the lock behind): the next run takes it over
    from hellodd.lock import FolderLock

    assert lock.is_file()
    with FolderLock(tmp_path, "teachers"):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"taking over {lock}: its holder, pid {first.pid}" in capsys.readouterr().err and not lock.exists()


def test_a_lock_from_a_reused_pid_is_stale(tmp_path):
    from hellodd.layout import LOCK_FILE
    from hellodd.lock import FolderLock

    # a live process that started after the lock was taken holds a reused pid: the holder is gone
    holder = {"host": socket.gethostname(), "pid": os.getppid(), "command": "run", "since_epoch": 1.0}
    (tmp_path / LOCK_FILE).write_text(json.dumps(holder))
    with FolderLock(tmp_path, "distill"):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    holder["since_epoch"] = time.time()  # the same process, alive since before the lock: a live holder
    (tmp_path / LOCK_FILE).write_text(json.dumps(holder))
    with pytest.raises(UserError, match=f"in use by pid {os.getppid()}"):
        FolderLock(tmp_path, "distill").acquire()


def _truncate(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) * 2 // 3])


def _flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01
    path.write_bytes(bytes(data))


def _flip_digit(path):
    text = path.read_text()
    i = next(i for i, ch in enumerate(text) if ch in "123456789" and i > 20)
    path.write_text(text[:i] + str((int(text[i]) % 9) + 1) + text[i + 1 :])


ARTEFACTS = [  # (kind, file under the run folder, how it is read)
    ("teacher checkpoint", "teachers/final.safetensors", "pool"),
    ("pool checkpoint", "teachers/pool/epoch_000.500.safetensors", "pool"),
    ("pool index", "teachers/pool.json", "pool"),
    ("adapters", "projector/rule-ipc2/adapters.safetensors", "tensors"),
    ("view-adapted adapters", "distill/ipc2-rded-update/adapters.safetensors", "tensors"),
    ("distilled images", "distill/ipc2-rded-update/images.safetensors", "set"),
    ("selection cache", "distill/ipc2-rded-update/init.safetensors", "tensors"),
    ("image-update state", "distill/ipc2-rded-update/state.pt", "state"),
    ("results", "distill/ipc2-rded-update/metrics.json", "json"),
    ("teachers' resume state", "teachers/state.pt", "state"),
]


@pytest.mark.parametrize("damage", [_truncate, _flip_last_byte], ids=["truncated", "byte-flipped"])
@pytest.mark.parametrize("kind, rel, reader", ARTEFACTS, ids=[a[0] for a in ARTEFACTS])
def test_a_damaged_artefact_is_refused_naming_it(base, tmp_path, kind, rel, reader, damage):
    from hellodd.config import apply_overrides, preset
    from hellodd.sets import read_set
    from hellodd.teachers import load_pool

    _copy(base, tmp_path, ["teachers", "projector", "distill"])
    path = tmp_path / rel
    (_flip_digit if damage is _flip_last_byte and path.suffix == ".json" else damage)(path)
    read = {
        "pool": lambda: load_pool(apply_overrides(preset("synthetic"), [f"out={tmp_path}"])),
        "tensors": lambda: load_tensors(path),
        "set": lambda: read_set(path.parent),
        "state": lambda: load_state(path),
        "json": lambda: read_json(path),
    }[reader]
    with pytest.raises(UserError, match=str(path.name)) as e:
        read()
    assert "\n" not in str(e.value)


def test_stored_label_files_are_checked_when_read(base, tmp_path):
    _copy(base, tmp_path, ["teachers", "projector", "distill"])
    args = ["evaluate", "--preset", "synthetic", "--out", str(tmp_path), "--set", "evaluate.seeds=[0]"]
    args += ["--set", "evaluate.label_sources=[stored]"]
    assert main(args) == 0
    first = sorted((tmp_path / "evaluate").rglob("epoch_0001.safetensors"))[0]
    _flip_last_byte(first)
    with pytest.raises(UserError, match="epoch_0001.safetensors: damaged"):
        load_tensors(first)


def _stopped(cmd, **env):
    """``cmd`` run with a SIGTERM sent by the test hooks: (the process, its hellodd: lines)."""
    p = subprocess.run(cmd, env=cli_env(**env), timeout=300, capture_output=True, text=True)
    return p, [line for line in p.stderr.splitlines() if line.startswith("hellodd:")]


LEFT = "left the {} at its next batch; run the same command to resume from the last checkpoint"


def test_sigterm_in_a_validation_pass_leaves_it_and_resumes_to_the_same_teacher(base, tmp_path):
    cut = tmp_path / "cut"
    stopped, lines = _stopped(_cmd("teachers", cut), HELLODD_DIE_IN="validation")
    assert stopped.returncode == 143 and "Traceback" not in stopped.stderr
    assert lines == ["hellodd: SIGTERM received: " + LEFT.format("validation")]
    resumed = subprocess.run(
        _cmd("teachers", cut), env=cli_env(), timeout=300, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-1500:]
    pools = [read_json(d / "teachers" / "pool.json")["checkpoints"] for d in (base, cut)]
    # the same checkpoints: metrics and tensors (a file's header order is safetensors' own, not ours)
    assert [{k: v for k, v in e.items() if k != "sha256"} for e in pools[0]] == [
        {k: v for k, v in e.items() if k != "sha256"} for e in pools[1]
    ]
    for f in ["final.safetensors"] + [e["file"] for e in pools[0]]:
        assert _same_tensors(base / "teachers" / f, cut / "teachers" / f), f


def test_sigterm_inside_an_evaluation_stops_there_and_resumes_to_the_same_result(base, tmp_path):
    """Stopped three times: inside an epoch's stored-label writing (left at its next batch: finished epochs
    are files), after its third epoch file, then inside a student's epoch (2 steps each: checkpointed after
    the step, not at the epoch's end); the step hook fires at the first loop that reaches step 3."""
    outs = [tmp_path / "cut", tmp_path / "ref"]
    for out in outs:
        _copy(base, out, ["teachers", "projector", "distill"])
    more = ["--set", "evaluate.label_sources=[stored]", "--set", "evaluate.seeds=[0]"]
    more += ["--set", "evaluate.epochs=6"]
    cmd = _cmd("evaluate", outs[0], *more)
    for hook, line in (
        ({"HELLODD_DIE_IN": "stored-label writing"}, LEFT.format("stored-label writing")),
        (
            {"HELLODD_DIE_AT_STEP": 3, "HELLODD_DIE_SIGNAL": "TERM"},
            "stored-label writing stopped at step 3/6",
        ),
        (
            {"HELLODD_DIE_AT_STEP": 3, "HELLODD_DIE_SIGNAL": "TERM"},
            "stored -> convnet-d2-w16, seed 0) stopped at step 1/6",
        ),
    ):
        stopped, lines = _stopped(cmd, **hook)
        assert stopped.returncode == 143 and len(lines) == 1 and line in lines[0], stopped.stderr[-1500:]
    resumed = subprocess.run(cmd, env=cli_env(), timeout=300, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-1500:]
    assert "resuming at epoch 1/6, step 1" in resumed.stdout
    assert main(_cmd("evaluate", outs[1], *more)[3:]) == 0
    rows = [json.loads((o / "evaluate" / "ipc2-rded-update" / "results.json").read_text()) for o in outs]
    assert [(r["score"], r["final_loss"]) for r in rows[0]] == [
        (r["score"], r["final_loss"]) for r in rows[1]
    ]


def test_a_sigterm_from_outside_stops_a_stage_at_its_next_step(tmp_path):
    """A scheduler's SIGTERM arrives at any time: the stage stops at its next step with its state written.
    The seconds it took are printed (pytest -s); what is asserted is where it stopped, not how fast."""
    out = tmp_path / "run"
    long = ["--set", "teacher.epochs=400", "--set", "teacher.pool_epochs=[400]"]  # 2,400 steps
    p = subprocess.Popen(_cmd("teachers", out, *long), env=cli_env(), stderr=subprocess.PIPE, text=True)
    state = out / "teachers" / "state.pt"
    deadline = time.monotonic() + 120
    while not state.exists() and p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    sent = time.monotonic()
    p.send_signal(15)
    err = p.communicate(timeout=120)[1]
    seconds = time.monotonic() - sent
    print(f"teachers: exited {seconds:.2f} s after SIGTERM")
    assert p.returncode == 143, err[-1500:]
    step = load_state(state)["step"]
    assert 0 < step < 2400 and f"teachers stopped at step {step}/2400" in err
