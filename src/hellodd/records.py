"""What every stage records beside its outputs (JSON):

``config.json``   the resolved :class:`~hellodd.config.Config`, versions, command line
``metrics.json``  the stage's measurements (accuracies, seconds, peak memory, ...)
``storage.json``  bytes of what the stage produced that a user would have to keep
"""

from __future__ import annotations

import platform
import resource
import sys
import time
from pathlib import Path

import torch

from hellodd.config import Config, to_dict
from hellodd.io import write_json
from hellodd.layout import CONFIG_FILE, METRICS_FILE, STORAGE_FILE
from hellodd.version import __version__


def versions() -> dict:
    out = {"hellodd": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for mod in ("torchvision", "lightning_fabric", "peft", "open_clip", "safetensors"):
        try:
            out[mod] = __import__(mod).__version__
        except Exception:  # an optional library that is not installed is simply not listed
            pass
    return out


def peak_memory_mib(device: torch.device | None = None) -> float:
    """Peak memory of this process: CUDA max allocated on a GPU, else the peak RSS."""
    if device is not None and device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def write_config(directory: Path, cfg: Config, stage: str) -> None:
    write_json(
        directory / CONFIG_FILE,
        {
            "stage": stage,
            "config": to_dict(cfg),
            "versions": versions(),
            "argv": sys.argv,
            "time": time.strftime("%F %T"),
        },
    )


def write_results(directory: Path, metrics: dict, storage: dict | None = None) -> None:
    write_json(directory / METRICS_FILE, metrics)
    if storage is not None:
        write_json(directory / STORAGE_FILE, storage)


def mib(n_bytes: float) -> float:
    return n_bytes / 2**20
