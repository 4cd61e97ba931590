"""What every stage writes beside its outputs: resolved config, metrics and storage report (JSON).

``<out>/<stage>/config.json``   the resolved :class:`~hellodd.config.Config`, versions, command line
``<out>/<stage>/metrics.json``  the stage's measurements (accuracies, seconds, peak memory, ...)
``<out>/<stage>/storage.json``  bytes of what the stage produced that a user would have to keep
"""

from __future__ import annotations

import platform
import resource
import sys
import time
from pathlib import Path

import torch

from hellodd import __version__
from hellodd.config import Config, to_dict
from hellodd.io import write_json


def stage_dir(cfg: Config, stage: str) -> Path:
    return Path(cfg.out) / stage


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
        directory / "config.json",
        {
            "stage": stage,
            "config": to_dict(cfg),
            "versions": versions(),
            "argv": sys.argv,
            "time": time.strftime("%F %T"),
        },
    )


def write_results(directory: Path, metrics: dict, storage: dict | None = None) -> None:
    write_json(directory / "metrics.json", metrics)
    if storage is not None:
        write_json(directory / "storage.json", storage)


def mib(n_bytes: float) -> float:
    return n_bytes / 2**20
