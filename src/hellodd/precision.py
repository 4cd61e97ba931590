"""Which floating-point precision a run computes in: ``engine.precision=auto`` resolved for this machine.

``auto`` (every preset's default that does not fix a precision) is ``bf16-mixed`` where the device computes
bf16 natively, otherwise ``32-true``:

* a CUDA GPU: bf16 where ``torch.cuda.is_bf16_supported()`` (Ampere and later);
* a CPU: bf16 where torch reports AVX512-BF16 or AMX tiles; on a CPU with neither (AVX2-only, AVX-512
  without BF16) torch emulates bf16 in software, several times slower than fp32 (docs/performance.md);
* any other device (MPS, ...): ``32-true``.

:func:`choose` returns the precision and a sentence saying why; the CLI resolves the config with it once,
before any stage runs, so ``config.json``, the first lines a run prints and the report all say the same.
An explicit ``bf16-mixed`` on a CPU without native bf16 still runs, with one warning line.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# what a warning says emulated bf16 costs: one ConvNet-D3 training step against fp32 (docs/performance.md)
EMULATED_BF16_SLOWDOWN = "about 8x"
EMULATED = "bf16 is emulated"  # how a ``why`` says it


@dataclass(frozen=True)
class Choice:
    precision: str  # what Fabric runs: 32-true | bf16-mixed | 16-mixed | 64-true
    why: str  # one sentence: how it was chosen
    emulated: bool = False  # bf16 asked for on a device that only emulates it


def cpu_bf16() -> tuple[bool, str]:
    """(native bf16 on this CPU, what torch reports of it)."""
    features = []
    if torch.cpu._is_amx_tile_supported():
        features.append("AMX")
    if torch.cpu._is_avx512_bf16_supported():
        features.append("AVX512-BF16")
    if features:
        return True, " and ".join(features)
    return False, f"capability {torch.backends.cpu.get_cpu_capability()}, no AVX512-BF16 or AMX"


def device_kind(accelerator: str) -> str:
    """The device a Fabric with this accelerator setting runs on: cpu, cuda or another torch device type."""
    if accelerator == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return accelerator


def native_bf16(accelerator: str) -> tuple[bool, str]:
    """(whether the device computes bf16 natively, what was found)."""
    kind = device_kind(accelerator)
    if kind == "cpu":
        native, found = cpu_bf16()
        return native, f"this CPU: {found}"
    if kind == "cuda":
        if not torch.cuda.is_available():
            return False, "no CUDA device"
        name = torch.cuda.get_device_name()
        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return native, f"{name}: {'native' if native else 'no native'} bf16"
    return False, f"{kind}: bf16 is not chosen automatically"


def choose(requested: str, accelerator: str) -> Choice:
    """The precision to run ``requested`` in on the device of ``accelerator``."""
    native, found = native_bf16(accelerator)
    if requested == "auto":
        if native:
            return Choice("bf16-mixed", f"auto: {found}, so bf16-mixed")
        return Choice("32-true", f"auto: {found}, so 32-true")
    if requested == "bf16-mixed" and not native:
        cost = f", {EMULATED_BF16_SLOWDOWN} slower than 32-true" if device_kind(accelerator) == "cpu" else ""
        return Choice(requested, f"set explicitly; {found}: {EMULATED}{cost}", emulated=True)
    return Choice(requested, "set explicitly")


def line(precision: str, why: str) -> tuple[str, bool]:
    """What a run prints first about its precision, and whether it is a warning."""
    if EMULATED in why:
        return f"warning: --precision {precision}: {why}", True
    return f"precision {precision} ({why})", False
