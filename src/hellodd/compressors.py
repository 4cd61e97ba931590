"""The field's stored-label compressors as label sources, each at a compression ratio: ``lpld:X``, ``lpqld:X``.

Both start from FKD/SRe2L stored labels (the teacher's fp16 logits for every batch record: one step of one
epoch, its views and their labels) and keep about 1/X of their bytes.  ``X`` is a number >= 1, or ``adapters``:
the ratio at which the label values weigh what the projector's adapter file weighs.

``lpld:X`` (label pruning, LPLD, NeurIPS 2024)
    keeps the first ``round(E * S / X)`` batch records of the E-epoch, S-step stream (their full fp16
    logits and augmentation), and every training step replays a record drawn at random, with
    replacement, from that pool (LPLD's ``batch_to_epoch`` reuse).
``lpqld:X`` (pruning + top-k, LPQLD)
    prunes the records ``P = min(X, 10)`` times as LPQLD's ImageNet scripts do, keeps the top-``k``
    logits of every view (fp16 values, integer class indices) with ``k`` chosen so that the label bytes
    shrink X times in all, and rebuilds a target by marginal re-normalisation: a softmax over the ``k``
    kept logits at the teacher temperature, zero for every other class, learnt with soft-target cross-entropy.
    Records are drawn without replacement within an epoch.  With ``evaluate.lpqld_reuse`` the teacher
    temperature follows LPQLD's dynamic knowledge reuse: ``T_e = max(2, T0 * 0.7 ** floor(10 e / E))`` with
    ``T0 = evaluate.temperature`` (20 by default: 20, 14, 9.8, ... over ten equal stretches of training).

The bytes a source costs are its files' (:mod:`hellodd.storage`), measured after writing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from hellodd.config.schema import is_compressor_source
from hellodd.engine import step_generator
from hellodd.labels import StoredLabels, load_tensors, stored_path

COMPRESSORS = ("lpld", "lpqld")
LPQLD_PRUNING = 10.0  # LPQLD's ImageNet-1K scripts prune every MR variant to a tenth of the records
VALUE_BYTES = 2  # fp16 stored values


def parse(name: str) -> tuple[str, str] | None:
    """``"lpld:40"`` -> ``("lpld", "40")``; None for a name that is not a compressor's."""
    if not is_compressor_source(name):
        return None
    method, _, arg = name.partition(":")
    return method, arg


is_compressor = is_compressor_source


def index_bytes(num_classes: int) -> int:
    return 1 if num_classes <= 256 else 2 if num_classes <= 32767 else 4


@dataclass(frozen=True)
class Plan:
    """What a compressor keeps: the first ``records`` batch records, the top-``topk`` logits (0 = all)."""

    method: str
    ratio: float
    records: int
    topk: int
    epochs_written: int  # epoch files the kept records span

    @property
    def describe(self) -> str:
        what = f"{self.records} batch records" + (f", top-{self.topk} logits" if self.topk else "")
        return f"{self.method} x{self.ratio:g}: {what}"


def plan(
    name: str, epochs: int, steps_per_epoch: int, num_classes: int, adapter_bytes: int = 0, views: int = 0
) -> Plan:
    """The records and top-k a compressor keeps for ratio X.  ``adapter_bytes`` and ``views`` (views per step)
    resolve ``X = adapters``: the full stored label values' bytes over the adapter file's."""
    method, arg = parse(name)
    total = epochs * steps_per_epoch
    if arg == "adapters":
        full = total * views * num_classes * VALUE_BYTES
        ratio = max(1.0, full / max(adapter_bytes, 1))
    else:
        ratio = float(arg)
    if method == "lpld":
        prune, topk = ratio, 0
    else:
        prune = min(ratio, LPQLD_PRUNING)
        per_value = VALUE_BYTES + index_bytes(num_classes)
        k = round(prune * num_classes * VALUE_BYTES / (ratio * per_value))
        topk = min(num_classes, max(1, k))
        if topk >= num_classes:
            topk = 0
    records = max(1, min(total, round(total / prune)))
    return Plan(method, ratio, records, topk, math.ceil(records / steps_per_epoch))


def reuse_temperature(epoch: int, epochs: int, t0: float) -> float:
    """LPQLD's dynamic knowledge reuse: the teacher temperature steps down 0.7x over ten equal stretches, >= 2."""
    return max(2.0, t0 * 0.7 ** math.floor(10 * epoch / max(epochs, 1)))


class PrunedLabels(StoredLabels):
    """Reads a pruned store: every training step replays a record drawn from the kept pool (seeded by the
    stream's seed, the epoch and the step), LPLD with replacement, LPQLD without within an epoch.  The pool is
    small by construction: it is held in memory."""

    def __init__(
        self,
        root,
        stream,
        key,
        num_classes,
        plan: Plan,
        epochs: int,
        name: str,
        storage: dict,
        t0: float,
        reuse: bool,
    ):
        super().__init__(root, stream, key, num_classes, plan.epochs_written, name, storage)
        self.plan, self.epochs, self.t0, self.reuse = plan, epochs, t0, reuse
        self.kind = "probs" if plan.method == "lpqld" else "logits"
        self.identity = {**self.identity, "records": plan.records, "topk": plan.topk, "method": plan.method}
        if plan.method == "lpqld":
            self.identity["reuse"] = reuse
        self._files: dict[int, dict] = {}
        self._draws: dict[int, torch.Tensor] = {}

    def _load(self, e: int):
        if e not in self._files:
            path = stored_path(self.root, e)
            tensors, meta = load_tensors(path)
            if meta.get("key") != self.tag:
                from hellodd.errors import UserError

                raise UserError(f"{path}: stored labels made from other inputs; refusing to reuse them")
            self._files[e] = tensors
        return self._files[e]

    def record(self, epoch: int, step: int) -> tuple[int, int]:
        if epoch not in self._draws:
            g = step_generator(self.stream.seed, epoch, 0, self.stream.rank, 13)
            n, s = self.plan.records, self.stream.steps_per_epoch
            if self.plan.method == "lpqld" and n >= s:
                self._draws = {epoch: torch.randperm(n, generator=g)[:s]}
            else:
                self._draws = {epoch: torch.randint(n, (s,), generator=g)}
        r = int(self._draws[epoch][step])
        return divmod(r, self.stream.steps_per_epoch)

    def targets(self, x, y, mix, epoch, step):
        if self.plan.method == "lpld":
            return super().targets(x, y, mix, epoch, step)
        e, s = self.record(epoch, step)
        b = self.stream.batch
        d = self._load(e)
        rows = slice(s * b, (s + 1) * b)
        t = reuse_temperature(epoch, self.epochs, self.t0) if self.reuse else self.t0
        if "logits" in d:  # k >= C: every logit kept
            return F.softmax(d["logits"][rows].float() / t, -1).to(x.device)
        values, classes = d["values"][rows].float(), d["classes"][rows].long()
        probs = torch.zeros(len(values), self.num_classes).scatter_(1, classes, F.softmax(values / t, -1))
        return probs.to(x.device)
