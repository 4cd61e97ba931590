"""One resumable loop: a loop's state bound to what made it, saved as it goes, resumed after a stop.

Every long loop (the teacher trajectory, the projector transfer, the view adaptation, the image update, a
student run) follows the same pattern::

    point = ResumePoint(out / STATE_FILE, key, "projector transfer", total, fabric, refuse=True)
    state = point.load()                 # None, or the saved state if it was made from ``key``
    ...
    for step in ...:
        ...                              # one step
        stop = point.poll(step)          # the test hook, then whether SIGTERM / Ctrl-C arrived (every rank)
        if due or stop:
            point.save(step, {...}, stop)  # rank 0 writes (temp file, then rename); stop: Preempted

``key`` names everything the loop's result depends on (settings, the hashes of its inputs).  A state made
from another key is never resumed: it is ignored (the loop starts afresh and overwrites it), or, with
``refuse``, refused with one line naming what differs, for loops whose folder must not be overwritten by a
run of other settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hellodd import engine
from hellodd.errors import UserError
from hellodd.io import load_state, save_state


class ResumePoint:
    def __init__(
        self,
        path: Path | None,
        key: Any,
        what: str,
        total: int,
        fabric=None,
        refuse: bool = False,
        restart_hint: str = "",
    ):
        self.path, self.key, self.what, self.total = (Path(path) if path else None), key, what, total
        self.fabric, self.refuse, self.restart_hint = fabric, refuse, restart_hint

    @property
    def _writer(self) -> bool:
        return self.fabric is None or self.fabric.is_global_zero

    def load(self) -> dict | None:
        """The saved state, if there is one made from this key."""
        if self.path is None or not self.path.exists():
            return None
        state = load_state(self.path)
        if state.get("key") == self.key:
            return state
        if self.refuse:
            theirs = state.get("key")
            differs = (
                sorted(k for k in self.key if (theirs or {}).get(k) != self.key[k])
                if isinstance(self.key, dict) and isinstance(theirs, dict)
                else ["key"]
            )
            raise UserError(
                f"{self.path}: resume state is from a different setup ({', '.join(differs)} differ)"
                + (f"; {self.restart_hint}" if self.restart_hint else "")
            )
        if self._writer:
            print(f"hellodd: {self.path} was made from other inputs; the {self.what} starts afresh")
        return None

    def hook(self, step: int) -> None:
        """The kill-and-resume tests' hook (``HELLODD_DIE_AT_STEP``): call it after every step."""
        engine.test_signal(step)

    def stop_requested(self) -> bool:
        """Whether SIGTERM / Ctrl-C arrived on any rank (collective: call it at the same points on every rank)."""
        return engine.stop_requested(self.fabric)

    def poll(self, step: int) -> bool:
        """After step ``step``: :meth:`hook`, then :meth:`stop_requested`."""
        self.hook(step)
        return self.stop_requested()

    def save(self, step: int, state: dict, stop: bool = False) -> None:
        """Write ``state`` (rank 0, atomically) with the key; after a stop request, end the loop here.  A loop
        without a state file (``path`` None) only stops."""
        if self.path is not None and self._writer:
            save_state(self.path, {**state, "key": self.key})
        if self.fabric is not None:
            self.fabric.barrier()
        if stop:
            raise engine.Preempted(self.what, step, self.total, self.path)

    def finish(self) -> None:
        """The loop is done: its state is no longer needed."""
        if self.path is not None and self._writer:
            self.path.unlink(missing_ok=True)
