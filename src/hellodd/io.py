"""Atomic file writes and checked loading of safetensors / JSON artefacts.

Every artefact is written to a temporary file in the destination folder, flushed, fsynced and
renamed over the target, so an interrupted run never leaves a half-written file behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from hellodd.errors import UserError

SELF_DIGEST = "_sha256"  # the key under which a JSON artefact records its own content's sha256


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a result should be as readable as any other file
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a quota, a read-only folder: the old file (if any) is untouched
        raise UserError(
            f"{path}: could not be written ({e.strerror or e}); nothing there was replaced"
        ) from None
    finally:
        if tmp.exists():
            tmp.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """A JSON artefact; a dict also records the sha256 of its own content (``_sha256``), which
    :func:`read_json` checks, so a changed byte is refused rather than read as another number."""
    if isinstance(obj, dict):
        plain = json.loads(json.dumps(obj, default=str))  # what a reader will see
        plain.pop(SELF_DIGEST, None)
        obj = {**plain, SELF_DIGEST: digest(plain)}
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        obj = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: not valid JSON ({e}); damaged or truncated") from None
    if isinstance(obj, dict) and SELF_DIGEST in obj:
        recorded = obj.pop(SELF_DIGEST)
        if digest(obj) != recorded:
            raise UserError(
                f"{path}: damaged (its content does not match the sha256 recorded when it was written)"
            )
    return obj


def payload_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """sha256 over a file's tensors (names, dtypes, shapes, bytes), recorded in every safetensors file hellodd
    writes and checked when it is read."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        h.update(name.encode())
        h.update(tensor_sha256(tensors[name]).encode())
    return h.hexdigest()


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], meta: dict | None = None) -> None:
    """Save tensors (made contiguous, memory unshared) with a JSON-able metadata dict and their sha256."""
    clean = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    metadata = {"hellodd": json.dumps(meta or {}, default=str), "sha256": payload_sha256(clean)}
    write_bytes(path, save(clean, metadata=metadata))


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Load a safetensors file written by :func:`save_tensors`; one clear error if it is truncated, foreign or
    altered (its tensors no longer match the sha256 recorded in it)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: file not found")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
        meta = json.loads(raw.get("hellodd", "{}"))
        tensors = load_file(str(path))
    except Exception as e:  # safetensors raises its own error types for truncated / foreign files
        raise UserError(f"{path}: not a readable safetensors file ({str(e).splitlines()[0]})") from None
    if "sha256" in raw and payload_sha256(tensors) != raw["sha256"]:
        raise UserError(f"{path}: damaged (its tensors do not match the sha256 recorded when it was written)")
    return tensors, meta


def file_metadata(path: str | os.PathLike) -> dict:
    """The hellodd metadata of a safetensors file, without reading its tensors ({} if unreadable)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return json.loads((f.metadata() or {}).get("hellodd", "{}"))
    except Exception:  # a damaged file has no trustworthy metadata: the caller rewrites or refuses it
        return {}


def sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


_VERIFIED: dict = {}  # (path, size, mtime) -> sha256, so a file checked once per process is not rehashed


def check_sha256(path: str | os.PathLike, expected: str, index: str | os.PathLike) -> None:
    """Refuse ``path`` unless its sha256 is the one ``index`` recorded for it (moved, replaced or damaged)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: listed in {index} but missing (moved or deleted)")
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = sha256(path)
    if _VERIFIED[key] != expected:
        raise UserError(
            f"{path}: not the file {index} recorded (sha256 differs: replaced, altered or truncated)"
        )


def digest(obj: Any) -> str:
    """sha256 of an object's canonical JSON: the key a cached file records of the inputs that made it."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (binds a cache to in-memory images; checks every loaded
    safetensors file, so the bytes are hashed in place, not copied)."""
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


STATE_MAGIC = b"hellodd-state-v1 sha256="


def save_state(path: str | os.PathLike, state: dict) -> None:
    """Resume state (model, optimizer, RNG, counters) with torch.save, atomically, behind a header line that
    records the payload's sha256 (checked by :func:`load_state`)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    payload = buf.getvalue()
    write_bytes(path, STATE_MAGIC + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def load_state(path: str | os.PathLike) -> dict:
    """A state written by :func:`save_state`; a truncated or altered one is one clear error."""
    data = Path(path).read_bytes()
    if data.startswith(STATE_MAGIC):
        head, _, payload = data.partition(b"\n")
        if hashlib.sha256(payload).hexdigest().encode() != head[len(STATE_MAGIC) :]:
            raise UserError(
                f"{path}: damaged resume state (sha256 mismatch: truncated or altered); delete it to restart"
            )
        data = payload
    try:
        return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:
        raise UserError(
            f"{path}: damaged resume state ({str(e).splitlines()[0]}); delete it to restart"
        ) from None
