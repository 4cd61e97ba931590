"""Shared fixtures: tiny generated datasets on disk (IDX files, an ImageFolder tree) and CLI helpers."""

from __future__ import annotations

import gzip
import os
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

os.environ.setdefault("HELLODD_NO_PROGRESS", "1")
# under pytest-xdist (one worker per core, ``-n auto``) each worker and the processes it starts use one
# thread: tiny models gain nothing from a second one, and two workers' thread pools would fight for the cores
WORKER = os.environ.get("PYTEST_XDIST_WORKER")
if WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1 if WORKER else min(2, torch.get_num_threads()))
REPO = Path(__file__).resolve().parents[1]


def write_idx(root: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool = True) -> None:
    root.mkdir(parents=True, exist_ok=True)
    n, h, w = images.shape
    img = (
        (2051).to_bytes(4, "big")
        + b"".join(v.to_bytes(4, "big") for v in (n, h, w))
        + images.astype(np.uint8).tobytes()
    )
    lab = (2049).to_bytes(4, "big") + n.to_bytes(4, "big") + labels.astype(np.uint8).tobytes()
    opener = gzip.open if gz else open
    suffix = ".gz" if gz else ""
    with opener(root / f"{prefix}-images-idx3-ubyte{suffix}", "wb") as f:
        f.write(img)
    with opener(root / f"{prefix}-labels-idx1-ubyte{suffix}", "wb") as f:
        f.write(lab)


@pytest.fixture
def idx_root(tmp_path) -> Path:
    """A miniature Fashion-MNIST: 10 classes, 6 train and 3 test images each, 28x28, as gzipped IDX."""
    rng = np.random.default_rng(0)
    root = tmp_path / "fmnist"
    for prefix, per in (("train", 6), ("t10k", 3)):
        labels = np.repeat(np.arange(10), per)
        images = rng.integers(0, 256, size=(len(labels), 28, 28))
        write_idx(root, prefix, images, labels)
    return root


@pytest.fixture
def folder_root(tmp_path) -> Path:
    """An ImageFolder tree with WordNet-ID class folders, 3 classes x (4 train, 2 val) RGB images of 20x24."""
    from PIL import Image

    rng = np.random.default_rng(1)
    root = tmp_path / "folder"
    for split, per in (("train", 4), ("val", 2)):
        for wnid in ("n01440764", "n01443537", "n01484850"):
            d = root / split / wnid
            d.mkdir(parents=True)
            for i in range(per):
                Image.fromarray(rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)).save(d / f"{i}.png")
    return root


# the kill steps of the kill-and-resume tests: drawn from this seed, printed in pytest's header and in every
# assertion message that uses one, so a failure replays with HELLODD_KILL_SEED=<seed>
KILL_SEED = int(os.environ.get("HELLODD_KILL_SEED", "20261130"))


def pytest_report_header(config):
    return f"hellodd kill-step seed: {KILL_SEED} (replay: HELLODD_KILL_SEED={KILL_SEED})"


@pytest.fixture(scope="session")
def synthetic_run(tmp_path_factory) -> Path:
    """Teachers, projector and distilled set of the synthetic preset, made once per test process.  Shared:
    a test copies what it changes and never writes here (bad-input tests check that nothing is written)."""
    from hellodd.cli import main

    out = tmp_path_factory.mktemp("synthetic-run")
    for stage in ("teachers", "projector", "distill"):
        assert main([stage, "--preset", "synthetic", "--out", str(out)]) == 0
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cli_env(**extra) -> dict:
    env = {
        **os.environ,
        "HELLODD_NO_PROGRESS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


PYTHON = sys.executable
