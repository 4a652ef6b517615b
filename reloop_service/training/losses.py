"""The four label regularizers as pure functions in an explicit registry.

Every loss has the signature ``(logits, labels, prior_probs, prior_mask, params) -> scalar``:

- ``logits``: FloatTensor [B], the candidate's raw scores z.
- ``labels``: FloatTensor [B] in {0, 1}.
- ``prior_probs``: FloatTensor [B], the prior (serving) version's predicted CTR; its value is
  ignored where ``prior_mask`` is False.
- ``prior_mask``: BoolTensor [B], True where a prior prediction exists.
- ``params``: the loss's parameters, already merged with ``DEFAULT_PARAMS`` (see ``resolve_params``).

The result is the mean over all B rows. Rows without a prior fall back to plain BCE for ``distill``
and ``reloop``: a missing prior is never replaced by a made-up one (such as 0.5 or the batch CTR),
because that would pull the model towards a value nobody predicted.

Defaults (``DEFAULT_PARAMS``):

- ``label_smoothing``: ``epsilon = 0.1`` (the issue's value; targets become 0.05 / 0.95).
- ``distill``: ``beta = 0.1`` and ``temperature = 1.0``, chosen like α on simulated worlds the reports
  never use (docs/benchmarks.md, "Distill's defaults, chosen on worlds of their own"): over β ∈ {0.1,
  0.25, 0.5} × τ ∈ {1, 2}, the gap to Bayes grows with the teacher's weight (6.65% at β 0.1, 7.24% at
  β 0.5 τ 2, bce 6.65%) and so does the served level (pooled calibration by hour up to 1.051 and
  1.101). A larger τ weighs the teacher more at low CTRs: the soft term's pull on z is β·σ'(z/τ)
  per unit of logit, 2.6x larger at τ 2 than at τ 1 for a 7% CTR, so the candidate inherits more
  of yesterday's errors. At τ 1 the soft term's optimum is the teacher's mean probability, so a
  calibrated teacher leaves the level alone. (Hinton et al.'s τ 2 softens a softmax over classes;
  one sigmoid has no dark knowledge to reveal.)
- ``reloop``: ``alpha = 0.02``. The self-correction term acts on probabilities, so its gradient with
  respect to z is ±p(1 − p): for CTRs of a few percent that is ~20x smaller than BCE's (p − y) on a
  click, and a small α keeps it a light anchor. It is also a ratchet that lowers the predictions:
  where the previous version predicted below a row's CTR c, the negatives' term pulls the candidate
  down with weight α(1 − c) and BCE balances it only at p ≈ c·(1 − α/(1 − α)); where it predicted
  above, the positives' term pulls up with weight only α·c. So the prior's own noise moves each
  warm-started day down, and the drift accumulates over days. α was chosen on simulated worlds the
  reports never use (docs/benchmarks.md, "Choosing α on worlds of its own"): at 20k impressions a
  day, α 0.1, 0.05 and 0.02 tie in the gap to Bayes (6.75%, 6.71%, 6.72%), and only 0.02 keeps the
  served calibration by hour within 0.95-1.05 (0.962..1.036; α 0.1: 0.934..1.007). α 0.7 served
  0.52-0.64 of the CTR. On ml100k no α beat bce beyond noise.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Final

import torch
import torch.nn.functional as F
from torch import Tensor

LossFn = Callable[[Tensor, Tensor, Tensor, Tensor, Mapping[str, float]], Tensor]

#: Probabilities are clamped into [PROB_EPS, 1 - PROB_EPS] before taking a logit.
PROB_EPS: Final = 1e-6


def _bce_rows(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-row BCE on logits (numerically stable). Shapes: [B], [B] -> [B]."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none")


def bce(
    logits: Tensor, labels: Tensor, prior_probs: Tensor, prior_mask: Tensor, params: Mapping[str, float]
) -> Tensor:
    """Binary cross-entropy on logits; ignores the prior."""
    return _bce_rows(logits, labels).mean()


def label_smoothing(
    logits: Tensor, labels: Tensor, prior_probs: Tensor, prior_mask: Tensor, params: Mapping[str, float]
) -> Tensor:
    """BCE against y·(1 − ε) + ε/2: never asks the model for a 0 or 1 it cannot be sure of."""
    eps = float(params["epsilon"])
    return _bce_rows(logits, labels * (1.0 - eps) + eps / 2.0).mean()


def tempered_prior(prior_probs: Tensor, temperature: float) -> Tensor:
    """p_prior_τ = σ(logit(clamp(p_prior)) / τ). Shape [B] -> [B]."""
    p = prior_probs.clamp(PROB_EPS, 1.0 - PROB_EPS)
    return torch.sigmoid(torch.logit(p) / temperature)


def distill(
    logits: Tensor, labels: Tensor, prior_probs: Tensor, prior_mask: Tensor, params: Mapping[str, float]
) -> Tensor:
    """(1 − β)·BCE(y, σ(z)) + β·τ²·BCE(p_prior_τ, σ(z/τ)) where a prior exists, BCE elsewhere.

    The prior version is the teacher; ``p_prior_τ`` is its probability re-tempered through its logit.
    """
    beta = float(params["beta"])
    tau = float(params["temperature"])
    hard = _bce_rows(logits, labels)
    teacher = tempered_prior(prior_probs.detach(), tau)
    soft = _bce_rows(logits / tau, teacher) * (tau * tau)
    rows = torch.where(prior_mask, (1.0 - beta) * hard + beta * soft, hard)
    return rows.mean()


def self_correction_rows(probs: Tensor, labels: Tensor, prior_probs: Tensor) -> Tensor:
    """L_sc = y·max(0, p_last − p) + (1 − y)·max(0, p − p_last), per row. [B] x3 -> [B].

    Penalises only rows where the candidate is further from the label than the prior was; its
    gradient is zero where the current error is already no larger than the prior's.
    """
    return labels * F.relu(prior_probs - probs) + (1.0 - labels) * F.relu(probs - prior_probs)


def reloop(
    logits: Tensor, labels: Tensor, prior_probs: Tensor, prior_mask: Tensor, params: Mapping[str, float]
) -> Tensor:
    """α·L_sc + (1 − α)·BCE where a prior exists (L_sc on probabilities p = σ(z)), BCE elsewhere."""
    alpha = float(params["alpha"])
    hard = _bce_rows(logits, labels)
    sc = self_correction_rows(torch.sigmoid(logits), labels, prior_probs.detach())
    rows = torch.where(prior_mask, alpha * sc + (1.0 - alpha) * hard, hard)
    return rows.mean()


LOSSES: Final[dict[str, LossFn]] = {
    "bce": bce,
    "label_smoothing": label_smoothing,
    "distill": distill,
    "reloop": reloop,
}

DEFAULT_PARAMS: Final[dict[str, dict[str, float]]] = {
    "bce": {},
    "label_smoothing": {"epsilon": 0.1},
    "distill": {"beta": 0.1, "temperature": 1.0},
    "reloop": {"alpha": 0.02},
}

#: Losses that read the prior; without any prior they are exactly BCE.
USES_PRIOR: Final[frozenset[str]] = frozenset({"distill", "reloop"})

_RANGES: Final[dict[str, tuple[float, float, bool]]] = {
    # name: (low, high, high_inclusive); low is always inclusive except for temperature.
    "epsilon": (0.0, 1.0, False),
    "beta": (0.0, 1.0, True),
    "alpha": (0.0, 1.0, True),
    "temperature": (0.0, math.inf, False),
}


def get_loss(name: str) -> LossFn:
    """The loss function called ``name``; a clear error listing the known ones otherwise."""
    try:
        return LOSSES[name]
    except KeyError:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}") from None


def resolve_params(name: str, params: Mapping[str, float] | None = None) -> dict[str, float]:
    """Defaults for ``name`` overridden by ``params``; rejects unknown keys and out-of-range values."""
    get_loss(name)
    merged = dict(DEFAULT_PARAMS[name])
    for key, value in (params or {}).items():
        if key not in merged:
            known = ", ".join(sorted(merged)) or "none"
            raise ValueError(f"loss {name!r} has no parameter {key!r} (parameters: {known})")
        merged[key] = float(value)
    for key, value in merged.items():
        low, high, high_inclusive = _RANGES[key]
        too_low = value <= low if key == "temperature" else value < low
        too_high = value > high if high_inclusive else value >= high
        if too_low or too_high or math.isnan(value):
            raise ValueError(f"loss {name!r}: parameter {key}={value} is out of range")
    return merged
