"""The image update of stage 4 (LIC adapted to HeLlO, supplement A.5; docs/method.md), sharded across ranks.

For image j with patches k, let ``p_jk`` be the patch cut from its source image at full resolution S (the
same box), ``q_jk`` the slot of the stored image ``s_j`` (the optimisation variable) and ``Up`` bilinear
up-sampling of a slot to S px.  With the projector's LoRA-adapted encoder ``E`` (D-dim), the projector ``g``
and the observer ``phi``, both frozen:

    L(s) = 1/(J K D) sum_jk || E(p_jk) - E(Up(q_jk)) ||^2                (information loss of E)
           + beta * 1/J sum_j KL( softmax(phi(s_j)) || softmax(g(s_j)) )   (observer-projector agreement)

The first term is the paper's: the distilled image should carry, *as the projector's encoder sees it*, the
information of the full-resolution patch it came from.  With factor 1 it only anchors ``s`` to its source
crop, so it cannot by itself narrow the observer-projector gap the update exists for; the second term does
that directly (beta = ``agreement_weight``, 1 by default).  Adam on pixels (lr 0.01), images clamped to
[0, 1] after every step, mini-batches of ``update_batch_size`` images in a fixed order.  The objective is
logged per iteration.

The update resumes from ``state.pt`` in the set's folder, bound to :func:`update_key` (the selection's key,
the projector and the update settings): a state made from other inputs is ignored and overwritten, never
resumed.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from hellodd import engine
from hellodd.config import Config
from hellodd.io import digest, sha256
from hellodd.layout import projector_path
from hellodd.resume import ResumePoint
from hellodd.selection import unstitch

UPDATE_FIELDS = ("update_epochs", "update_lr", "update_batch_size", "agreement_weight")


def update_key(cfg: Config, init_key: str) -> str:
    """What an update state depends on: the initial images (their :func:`~hellodd.selection.selection_key`),
    stage 3's projector and the update settings."""
    return digest(
        {
            "state_format": 2,  # gathered images and Adam moments: resumable with any number of ranks
            "init": init_key,
            "projector_sha256": sha256(projector_path(cfg)),
            "update": {k: getattr(cfg.distill, k) for k in UPDATE_FIELDS},
        }
    )


def update_objective(s, full_feats, projector, observer, factor, beta, batch: int | None = None):
    """L(s) for a batch of images ``s`` [J,C,S,S] given E(p_jk) as ``full_feats`` [J*K, D].

    Both terms are sums over images divided by ``batch`` (default J): a rank holding part of a batch passes
    the whole batch's size, and the ranks' values (and gradients) add up to the whole batch's."""
    size, batch = s.shape[-1], batch or len(s)
    slots = unstitch(s, factor).flatten(0, 1)
    up = (
        F.interpolate(slots, size=(size, size), mode="bilinear", align_corners=False) if factor > 1 else slots
    )
    terms = batch * factor * factor * full_feats.shape[-1]  # the whole batch's J x K x D
    info = (projector.encode(up).float() - full_feats).pow(2).sum() / terms
    agree = (
        F.kl_div(
            F.log_softmax(projector(s).float(), -1),
            F.log_softmax(observer(s).float(), -1),
            log_target=True,
            reduction="sum",
        )
        / batch
    )
    return info + beta * agree, info, agree


def update_iterations(cfg: Config, n_images: int) -> int:
    """``distill.update_epochs`` passes over the ``n_images`` distilled images, in batches of ``update_batch_size``."""
    d = cfg.distill
    return math.ceil(d.update_epochs * n_images / min(d.update_batch_size, n_images))


def update_optimizer(pixels: torch.Tensor, cfg: Config) -> torch.optim.Optimizer:
    """Supplement A.5: Adam, lr ``distill.update_lr`` (0.01), on the pixels."""
    return torch.optim.Adam([pixels], lr=cfg.distill.update_lr)


def image_update(
    images,
    full_patches,
    projector,
    observer,
    cfg: Config,
    state_path: Path,
    bar=None,
    key: str = "",
    fabric=None,
) -> tuple[torch.Tensor, list]:
    """Adam on pixels; resumable from ``state_path`` (saved every 20 iterations and at the end).  A state
    whose ``key`` (digest of the initial images, projector, observer and update settings) differs is stale:
    it is ignored and overwritten, never resumed.

    Across ranks, each holds a contiguous block of the images (:func:`hellodd.engine.block`) with its own Adam
    state.  Every iteration the batch is the one-process batch; a rank takes its images in it and divides by
    the whole batch's size, and every rank steps every iteration (images outside the batch move on their
    momentum, as in one process).  Adam and the clamp act per pixel, so the result does not depend on the
    number of processes, up to how the networks' kernels round batches of other sizes.  The state file holds
    all images and Adam moments, gathered: a run resumes with any number of processes."""
    d = cfg.distill
    rank, world = (fabric.global_rank, fabric.world_size) if fabric is not None else (0, 1)
    dev = next(observer.parameters()).device
    j, k = len(images), d.factor * d.factor
    mine = engine.block(j, rank, world)
    lo, hi = mine.start, mine.stop
    s = images[lo:hi].clone().to(dev).requires_grad_(True)
    opt = update_optimizer(s, cfg)
    total = update_iterations(cfg, j)
    it, history = 0, []
    point = ResumePoint(state_path, key, "image update", total, fabric)
    st = point.load()
    if st is not None and st["images"].shape == images.shape:
        with torch.no_grad():
            s.copy_(st["images"][lo:hi].to(dev))
        moments = st["optimizer"]
        opt.load_state_dict(
            {
                "state": {
                    0: {
                        "step": moments["step"],
                        "exp_avg": moments["exp_avg"][lo:hi],
                        "exp_avg_sq": moments["exp_avg_sq"][lo:hi],
                    }
                },
                "param_groups": opt.state_dict()["param_groups"],
            }
        )
        it, history = st["iter"], st["history"]
    with torch.no_grad():
        mine_full = full_patches.view(j, k, *full_patches.shape[1:])[lo:hi].flatten(0, 1)
        full_feats = (
            torch.cat(
                [
                    projector.encode(mine_full[i : i + 256].to(dev)).float()
                    for i in range(0, len(mine_full), 256)
                ]
            )
            if len(mine_full)
            else torch.zeros(0, device=dev)
        )
    bsz = min(d.update_batch_size, j)
    final = None  # the gathered images of the last checkpoint, when it is the last iteration
    partial = torch.zeros(total, 3, dtype=torch.float64)  # this rank's share of loss, info, agreement
    logged = it
    if bar is not None:
        bar.reset(total=total)
        bar.update(it)
    while it < total:
        start = (it * bsz) % j
        idx = torch.arange(start, start + bsz) % j
        local = idx[(idx >= lo) & (idx < hi)] - lo
        opt.zero_grad(set_to_none=True)
        if len(local):
            loss, info, agree = update_objective(
                s[local],
                full_feats.view(hi - lo, k, -1)[local].flatten(0, 1),
                projector,
                observer,
                d.factor,
                d.agreement_weight,
                batch=bsz,
            )
            loss.backward()
            partial[it] = torch.tensor([loss.item(), info.item(), agree.item()], dtype=torch.float64)
        else:  # none of this rank's images in the batch: a zero gradient, so Adam still steps (momentum)
            s.grad = torch.zeros_like(s)
        opt.step()
        with torch.no_grad():
            s.clamp_(0, 1)
        it += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{partial[it - 1, 0].item():.4f}", refresh=False)
        stop = point.poll(it)
        if it % 20 == 0 or it == total or stop:
            history += _whole_batch_history(fabric, partial, logged, it)
            logged = it
            state = {
                "images": _gathered(fabric, s.detach(), j),
                "optimizer": _gathered_moments(fabric, opt, s, j),
                "iter": it,
                "history": history,
            }
            point.save(it, state, stop)
            final = state["images"] if it == total else None
    return (final if final is not None else _gathered(fabric, s.detach(), j)), history


def _gathered(fabric, t: torch.Tensor, n: int) -> torch.Tensor:
    return (engine.gather_blocks(fabric, t, n) if fabric is not None else t).cpu()


def _gathered_moments(fabric, opt, s, n: int) -> dict:
    st = opt.state[s]
    return {
        "step": st["step"].detach().cpu().clone(),
        "exp_avg": _gathered(fabric, st["exp_avg"], n),
        "exp_avg_sq": _gathered(fabric, st["exp_avg_sq"], n),
    }


def _whole_batch_history(fabric, partial: torch.Tensor, first: int, last: int) -> list[dict]:
    rows = partial[first:last]
    if fabric is not None and fabric.world_size > 1:
        rows = fabric.all_reduce(rows.to(fabric.device), reduce_op="sum").cpu()
    return [
        {"iter": first + i + 1, "loss": r[0].item(), "info": r[1].item(), "agreement_kl": r[2].item()}
        for i, r in enumerate(rows)
    ]
