"""What a student minimises against a label source's targets (and what a loaded light set exposes)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from hellodd.config import EvaluateConfig


def logit_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    y: torch.Tensor,
    loss: str,
    ce_weight: float,
    temperature: float,
) -> torch.Tensor:
    """A student's loss against a labeller's logits: MSE + ``ce_weight`` x CE to ``y``, or KL at ``temperature``."""
    if loss == "kl":
        t = temperature
        return F.kl_div(
            F.log_softmax(logits / t, -1),
            F.log_softmax(targets / t, -1),
            log_target=True,
            reduction="batchmean",
        )
    return F.mse_loss(logits, targets) + ce_weight * F.cross_entropy(logits, y)


def gift_loss(
    logits: torch.Tensor, targets: torch.Tensor, y: torch.Tensor, smoothing: float = 0.1
) -> torch.Tensor:
    """GIFT's refined target and loss: ``1 - cos(logits, normalize(targets) + 0.1 * normalize(smooth(y)))``,
    with ``smooth(y)`` the one-hot label smoothed by ``smoothing`` (the rest spread over the other classes).
    ``y`` is the un-mixed hard label, as in the CE term of the ``mse`` loss."""
    c = logits.shape[-1]
    smooth = torch.full_like(targets, smoothing / (c - 1)).scatter_(1, y[:, None], 1.0 - smoothing)
    refined = F.normalize(targets, dim=-1) + 0.1 * F.normalize(smooth, dim=-1)
    return 1.0 - F.cosine_similarity(logits, refined, dim=-1).mean()


def student_loss(
    ev: EvaluateConfig, logits: torch.Tensor, targets: torch.Tensor, kind: str, y: torch.Tensor
) -> torch.Tensor:
    """The loss for a source of this ``kind``: soft-target CE on probabilities, GIFT's, or :func:`logit_loss`."""
    if kind == "probs":
        return torch.sum(-targets * F.log_softmax(logits, -1), -1).mean()
    if kind == "gift":
        return gift_loss(logits, targets, y)
    return logit_loss(logits, targets, y, ev.loss, ev.ce_weight, ev.temperature)
