"""Real-data checks (minutes on 2 cores): ``python -m pytest -m slow``."""

import json
from pathlib import Path

import pytest

from hellodd.cli import main
from hellodd.config import FASHION_MNIST_DEBIAN

needs_fmnist = pytest.mark.skipif(
    not Path(FASHION_MNIST_DEBIAN).is_dir(), reason="dataset-fashion-mnist not installed"
)


@pytest.mark.slow
@needs_fmnist
def test_fashion_mnist_teacher_reaches_85_percent_with_a_rising_pool(tmp_path):
    assert main(["teachers", "--preset", "fashion-mnist", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "teachers" / "metrics.json").read_text())
    accs = [p["top1"] for p in metrics["pool"]]
    assert metrics["final_val_top1"] >= 85.0
    assert accs[-1] > accs[0] + 10  # early checkpoints are the weak teachers
