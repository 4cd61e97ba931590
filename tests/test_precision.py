"""engine.precision=auto: bf16-mixed where the device computes bf16 natively, else 32-true (detection mocked
for every capability), recorded in config.json and said in a run's first line and its report."""

from __future__ import annotations

import pytest
import torch

from hellodd import precision
from hellodd.cli import build_config, main
from hellodd.io import read_json


def _cpu(monkeypatch, capability: str, avx512_bf16: bool = False, amx: bool = False):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)


@pytest.mark.parametrize(
    "capability, avx512_bf16, amx, chosen, found",
    [
        ("AVX2", False, False, "32-true", "capability AVX2, no AVX512-BF16 or AMX"),
        ("AVX512", False, False, "32-true", "capability AVX512, no AVX512-BF16 or AMX"),
        ("AVX512", True, False, "bf16-mixed", "AVX512-BF16"),
        ("AVX512", True, True, "bf16-mixed", "AMX and AVX512-BF16"),
        ("DEFAULT", False, False, "32-true", "capability DEFAULT"),
    ],
)
def test_auto_on_each_cpu_capability(monkeypatch, capability, avx512_bf16, amx, chosen, found):
    _cpu(monkeypatch, capability, avx512_bf16, amx)
    for accelerator in ("auto", "cpu"):
        c = precision.choose("auto", accelerator)
        assert c.precision == chosen and not c.emulated
        assert c.why.startswith("auto: this CPU: ") and found in c.why and c.why.endswith(f"so {chosen}")


@pytest.mark.parametrize("native, chosen", [(True, "bf16-mixed"), (False, "32-true")])
def test_auto_on_a_cuda_gpu_follows_its_bf16_support(monkeypatch, native, chosen):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "GPU X")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native)
    _cpu_flags = (lambda: True, lambda: True)  # a bf16 CPU beside it changes nothing
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", _cpu_flags[0])
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", _cpu_flags[1])
    for accelerator in ("auto", "cuda"):
        c = precision.choose("auto", accelerator)
        assert c.precision == chosen and "GPU X" in c.why


def test_other_devices_and_explicit_settings(monkeypatch):
    _cpu(monkeypatch, "AVX2")
    assert precision.choose("auto", "mps").precision == "32-true"
    explicit = precision.choose("bf16-mixed", "cpu")  # still runs, but says it is emulated and at what cost
    assert explicit.precision == "bf16-mixed" and explicit.emulated
    assert "bf16 is emulated" in explicit.why and precision.EMULATED_BF16_SLOWDOWN in explicit.why
    text, warn = precision.line(explicit.precision, explicit.why)
    assert warn and text.startswith(
        "warning: --precision bf16-mixed: set explicitly; this CPU: capability AVX2"
    )
    for asked in ("32-true", "16-mixed"):
        c = precision.choose(asked, "cpu")
        assert (c.precision, c.why, c.emulated) == (asked, "set explicitly", False)
    _cpu(monkeypatch, "AVX512", avx512_bf16=True)
    native = precision.choose("bf16-mixed", "cpu")
    assert not native.emulated and precision.line(native.precision, native.why) == (
        "precision bf16-mixed (set explicitly)",
        False,
    )


@pytest.mark.parametrize("bf16, chosen", [(False, "32-true"), (True, "bf16-mixed")])
def test_every_preset_but_the_fixed_ones_resolves_auto(monkeypatch, bf16, chosen):
    _cpu(monkeypatch, "AVX512" if bf16 else "AVX2", avx512_bf16=bf16)
    from hellodd.cli import _parser

    for preset in ("fashion-mnist", "glyphs-100", "glyphs-1000", "imagenet-1k", "fashion-mnist-scenes"):
        cfg = build_config(_parser().parse_args(["storage", "--preset", preset]))
        assert (cfg.engine.precision, cfg.engine.precision_why[:5]) == (chosen, "auto:"), preset
    # the test presets and SAM's fix theirs, so they compute the same way on every CPU
    for preset, fixed in (("synthetic", "32-true"), ("synthetic-scenes", "bf16-mixed"), ("voc", "32-true")):
        cfg = build_config(_parser().parse_args(["storage", "--preset", preset]))
        assert (cfg.engine.precision, cfg.engine.precision_why.split(";")[0]) == (fixed, "set explicitly")


def test_config_json_the_first_line_and_the_report_say_what_was_chosen(monkeypatch, tmp_path, capsys):
    _cpu(monkeypatch, "AVX2")
    out = tmp_path / "run"
    args = ["--preset", "synthetic", "--out", str(out), "--precision", "auto"]
    assert main(["teachers", *args, "--set", "teacher.epochs=0.5", "--set", "teacher.pool_epochs=[0.5]"]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert (
        first
        == "hellodd: precision 32-true (auto: this CPU: capability AVX2, no AVX512-BF16 or AMX, so 32-true)"
    )
    engine = read_json(out / "teachers" / "config.json")["config"]["engine"]
    assert engine["precision"] == "32-true" and engine["precision_why"].startswith("auto: this CPU")


def test_the_report_names_the_students_precision(tmp_path):
    from hellodd.frontier import precision_of, table
    from hellodd.io import write_json

    for name, why in (("ipc10-rded", "auto: this CPU: AMX, so bf16-mixed"), ("ipc10-random", "")):
        write_json(tmp_path / "evaluate" / name / "metrics.json", {})
        engine = {"precision": "bf16-mixed", "precision_why": why}
        write_json(tmp_path / "evaluate" / name / "config.json", {"config": {"engine": engine}})
    said = precision_of(tmp_path)  # a set evaluated before the choice was recorded says nothing
    assert said == "bf16-mixed (auto: this CPU: AMX, so bf16-mixed)"
    whole = {"run": {"arch": "convnet", "score": 80.0, "score_name": "top-1", "precision": said}}
    assert f"Students computed in {said}." in table([], whole).splitlines()
    del whole["run"]["precision"]  # an old report renders as before
    assert "Students computed" not in table([], whole)
