"""One writer per output folder: ``<out>/.hellodd.lock``.

A command that writes into a run folder (``run``, ``teachers``, ``projector``, ``distill``, ``evaluate``,
``export``) takes the folder's lock first.  The lock file is created exclusively (``O_CREAT | O_EXCL``) and
holds who took it: host, pid, the command and when.  A second run on the same folder is refused with one
line naming the holder.  A lock whose holder is gone (same host, the pid no longer exists, or exists but
started after the lock was taken, i.e. a reused pid) is stale: it is taken over, with a line saying so.
A lock held from another host cannot be checked from here: it is refused, and the message says how to
remove it once that job is known to be dead.

Only the launching process (global rank 0, or a process that is not part of a launched group) takes the
lock; the other ranks of the same job write nothing outside rank 0's control.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from hellodd.errors import UserError
from hellodd.layout import LOCK_FILE


def _is_secondary_rank() -> bool:
    return any(int(os.environ.get(k, "0") or 0) > 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def _process_start(pid: int) -> float | None:
    """Seconds since the epoch at which ``pid`` started (Linux /proc), None if there is no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        boot = next(
            float(line.split()[1])
            for line in Path("/proc/stat").read_text().splitlines()
            if line.startswith("btime")
        )
    except (OSError, StopIteration, ValueError):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            return 0.0
        return 0.0  # alive, start time unknown
    ticks = int(stat.rsplit(")", 1)[1].split()[19])
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _stale(holder: dict) -> bool:
    if holder.get("host") != socket.gethostname():
        return False
    pid = int(holder.get("pid", -1))
    if pid == os.getpid():
        return True  # our own (an in-process caller that did not release): take it again
    started = _process_start(pid)
    return started is None or started > float(holder.get("since_epoch", 0)) + 1


class FolderLock:
    """``with FolderLock(out, command):`` holds the folder's lock for the block (see the module doc)."""

    def __init__(self, folder: str | os.PathLike, command: str):
        self.path = Path(folder) / LOCK_FILE
        self.command = command
        self.held = False

    def _describe(self, holder: dict) -> str:
        since = holder.get("since", "?")
        return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} ('hellodd {holder.get('command', '?')}', since {since})"

    def acquire(self) -> None:
        if _is_secondary_rank():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "command": self.command,
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            "since_epoch": time.time(),
        }
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    holder = json.loads(self.path.read_text() or "{}")
                except (OSError, ValueError):
                    holder = {}  # written half-way by a process that died at once: nobody holds it
                if holder and not _stale(holder):
                    where = (
                        f"remove {self.path} once that job is known to be dead"
                        if holder.get("host") != me["host"]
                        else "wait for it to finish, or use another --out"
                    )
                    raise UserError(
                        f"--out {self.path.parent}: in use by {self._describe(holder)}; {where}"
                    ) from None
                if holder:
                    print(
                        f"hellodd: taking over {self.path}: its holder, {self._describe(holder)}, is gone",
                        file=sys.stderr,
                    )
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise UserError(
            f"--out {self.path.parent}: could not take {self.path} (another run took it meanwhile)"
        )

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
