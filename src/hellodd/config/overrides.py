"""``--set section.field=value`` overrides, and a config to and from JSON (what every stage records)."""

from __future__ import annotations

import dataclasses
import json
import types
import typing

from hellodd.config.presets import apply_ipc_settings
from hellodd.config.schema import Config
from hellodd.config.validate import choice_text, validate
from hellodd.errors import UserError


def _coerce(value: str, tp: typing.Any, key: str) -> typing.Any:
    origin = typing.get_origin(tp)
    if origin is typing.Literal:  # a closed choice: its values are the type's
        if value in typing.get_args(tp):
            return value
        raise UserError(f"--set {key}: must be {choice_text(typing.get_args(tp))} (not {value!r})")
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value.lower() in ("none", "null", ""):
            return None
        return _coerce(value, args[0], key)
    if origin is list:
        (item,) = typing.get_args(tp)
        text = value.strip()
        if text.startswith("["):
            if not text.endswith("]"):
                raise UserError(f"--set {key}: {value!r} is not a list")
            try:
                items = json.loads(text)
            except json.JSONDecodeError:  # [a,b] without quotes, as a shell user types it
                items = text[1:-1].split(",")
            return [_coerce(str(v).strip(), item, key) for v in items if str(v).strip()]
        return [_coerce(v.strip(), item, key) for v in text.split(",") if v.strip()]
    try:
        if tp is bool:
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return value
    except ValueError:
        raise UserError(f"--set {key}: {value!r} is not a valid {tp.__name__}") from None
    raise UserError(f"--set {key}: cannot set a field of type {tp}")


def _hints(obj: typing.Any) -> dict[str, typing.Any]:
    return typing.get_type_hints(type(obj))


def set_value(cfg: Config, key: str, value: str) -> None:
    """Apply one ``section.field=value`` override, coercing to the field's declared type."""
    parts = key.split(".")
    target: typing.Any = cfg
    for i, part in enumerate(parts):
        if not dataclasses.is_dataclass(target) or part not in {f.name for f in dataclasses.fields(target)}:
            known = (
                ", ".join(f.name for f in dataclasses.fields(target))
                if dataclasses.is_dataclass(target)
                else ""
            )
            raise UserError(f"--set {key}: unknown key {'.'.join(parts[: i + 1])!r} (known here: {known})")
        if i < len(parts) - 1:
            target = getattr(target, part)
        elif dataclasses.is_dataclass(getattr(target, part)):
            raise UserError(f"--set {key}: name a field inside the section, e.g. {key}.<field>=...")
        else:
            setattr(target, part, _coerce(value, _hints(target)[part], key))


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``key=value`` overrides; a new ``distill.ipc`` brings the preset's settings for that IPC
    (:data:`IPC_SETTINGS`), except the fields these overrides set themselves."""
    keys = []
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected key=value, e.g. teacher.epochs=3")
        key, value = item.split("=", 1)
        set_value(cfg, key.strip(), value.strip())
        keys.append(key.strip())
    if "distill.ipc" in keys:
        apply_ipc_settings(cfg, keep=keys)
    validate(cfg)
    return cfg


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(data: dict, where: str = "config") -> Config:
    """Rebuild a Config from :func:`to_dict` output; unknown keys are an error."""

    def build(cls: type, values: dict, prefix: str) -> typing.Any:
        if not isinstance(values, dict):
            raise UserError(f"{where}: {prefix or 'top level'} must be an object")
        hints = typing.get_type_hints(cls)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise UserError(f"{where}: unknown key '{prefix}{sorted(unknown)[0]}'")
        kwargs = {}
        for k, v in values.items():
            tp = hints[k]
            kwargs[k] = build(tp, v, f"{prefix}{k}.") if dataclasses.is_dataclass(tp) else v
        return cls(**kwargs)

    cfg = build(Config, data, "")
    validate(cfg)
    return cfg
