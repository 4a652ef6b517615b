"""Every loss against values and gradients computed by hand (with ``math``, not torch)."""

from __future__ import annotations

import math

import pytest
import torch

from reloop_service.training.losses import (
    DEFAULT_PARAMS,
    LOSSES,
    get_loss,
    resolve_params,
)


def sig(z: float) -> float:
    return 1.0 / (1.0 + math.exp(-z))


def bce_by_hand(z: float, y: float) -> float:
    p = sig(z)
    return -(y * math.log(p) + (1.0 - y) * math.log(1.0 - p))


Z = [0.0, 2.0, -1.0, 0.5]
Y = [1.0, 0.0, 0.0, 1.0]
PRIOR = [0.7, 0.9, 0.1, 0.3]
MASK = [True, True, True, False]


def run(name: str, params: dict[str, float] | None = None, mask: list[bool] | None = None, prior=None):
    """Loss value and d loss / d logits for the fixed tensors above."""
    logits = torch.tensor(Z, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor(Y, dtype=torch.float64)
    prior_t = torch.tensor(prior if prior is not None else PRIOR, dtype=torch.float64)
    mask_t = torch.tensor(mask if mask is not None else MASK)
    loss = get_loss(name)(logits, labels, prior_t, mask_t, resolve_params(name, params))
    loss.backward()
    assert logits.grad is not None
    return float(loss.detach()), logits.grad.tolist()


def test_registry_is_explicit_and_complete() -> None:
    assert set(LOSSES) == {"bce", "label_smoothing", "distill", "reloop"}
    assert set(DEFAULT_PARAMS) == set(LOSSES)
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        get_loss("focal")


def test_bce_value_and_gradient() -> None:
    value, grad = run("bce")
    assert value == pytest.approx(sum(bce_by_hand(z, y) for z, y in zip(Z, Y, strict=True)) / 4, rel=1e-12)
    # ln 2 for z=0, y=1 is the textbook value.
    assert bce_by_hand(0.0, 1.0) == pytest.approx(math.log(2.0))
    assert grad == pytest.approx([(sig(z) - y) / 4 for z, y in zip(Z, Y, strict=True)], rel=1e-12)


def test_label_smoothing_default_epsilon() -> None:
    value, grad = run("label_smoothing")
    eps = 0.1
    targets = [y * (1 - eps) + eps / 2 for y in Y]  # 0.95 / 0.05
    assert targets == pytest.approx([0.95, 0.05, 0.05, 0.95])
    expected = sum(
        -(t * math.log(sig(z)) + (1 - t) * math.log(1 - sig(z))) for z, t in zip(Z, targets, strict=True)
    )
    assert value == pytest.approx(expected / 4, rel=1e-12)
    assert grad == pytest.approx([(sig(z) - t) / 4 for z, t in zip(Z, targets, strict=True)], rel=1e-12)


def test_label_smoothing_zero_epsilon_is_bce() -> None:
    assert run("label_smoothing", {"epsilon": 0.0})[0] == pytest.approx(run("bce")[0], rel=1e-12)


def test_distill_value_and_gradient() -> None:
    beta, tau = 0.3, 2.0
    value, grad = run("distill", {"beta": beta, "temperature": tau})
    rows, grads = [], []
    for z, y, p, m in zip(Z, Y, PRIOR, MASK, strict=True):
        if not m:
            rows.append(bce_by_hand(z, y))
            grads.append(sig(z) - y)
            continue
        t = sig(math.log(p / (1 - p)) / tau)  # teacher re-tempered through its logit
        soft = -(t * math.log(sig(z / tau)) + (1 - t) * math.log(1 - sig(z / tau)))
        rows.append((1 - beta) * bce_by_hand(z, y) + beta * tau * tau * soft)
        grads.append((1 - beta) * (sig(z) - y) + beta * tau * (sig(z / tau) - t))
    assert value == pytest.approx(sum(rows) / 4, rel=1e-10)
    assert grad == pytest.approx([g / 4 for g in grads], rel=1e-10)


def test_distill_clamps_prior_of_zero_and_one() -> None:
    value, grad = run("distill", prior=[0.0, 1.0, 0.0, 1.0])
    assert math.isfinite(value)
    assert all(math.isfinite(g) for g in grad)


def test_reloop_value_and_gradient() -> None:
    alpha = 0.5
    value, grad = run("reloop", {"alpha": alpha})
    rows, grads = [], []
    for z, y, p_last, m in zip(Z, Y, PRIOR, MASK, strict=True):
        p = sig(z)
        if not m:
            rows.append(bce_by_hand(z, y))
            grads.append(p - y)
            continue
        sc = y * max(0.0, p_last - p) + (1 - y) * max(0.0, p - p_last)
        rows.append(alpha * sc + (1 - alpha) * bce_by_hand(z, y))
        dsc = 0.0
        if y == 1 and p_last > p:
            dsc = -p * (1 - p)
        if y == 0 and p > p_last:
            dsc = p * (1 - p)
        grads.append(alpha * dsc + (1 - alpha) * (p - y))
    assert value == pytest.approx(sum(rows) / 4, rel=1e-12)
    assert grad == pytest.approx([g / 4 for g in grads], rel=1e-12)


def test_self_correction_gradient_is_zero_where_candidate_is_no_worse_than_prior() -> None:
    # alpha = 1: only L_sc. Row 0: y=1, p=0.5 < prior 0.7 -> worse -> gradient.
    # Row 1: y=0, p=0.88 < prior 0.9 -> no worse -> zero. Row 2: y=0, p=0.27 > prior 0.1 -> worse.
    # Row 3: y=1, p=0.62 > prior 0.3 -> no worse -> zero. A full mask isolates L_sc on every row.
    value, grad = run("reloop", {"alpha": 1.0}, mask=[True, True, True, True])
    assert grad[1] == 0.0
    assert grad[3] == 0.0
    assert grad[0] == pytest.approx(-sig(0.0) * (1 - sig(0.0)) / 4)
    assert grad[2] == pytest.approx(sig(-1.0) * (1 - sig(-1.0)) / 4)
    assert value == pytest.approx(((0.7 - 0.5) + (sig(-1.0) - 0.1)) / 4)


@pytest.mark.parametrize("name", ["distill", "reloop"])
def test_rows_without_prior_fall_back_to_bce(name: str) -> None:
    none = [False] * 4
    value, grad = run(name, mask=none)
    bce_value, bce_grad = run("bce")
    assert value == pytest.approx(bce_value, rel=1e-12)
    assert grad == pytest.approx(bce_grad, rel=1e-12)
    # The prior's value on masked rows is never read (no fake prior sneaks in).
    assert run(name, mask=none, prior=[0.0, 0.0, 0.0, 0.0])[0] == value
    assert run(name, prior=[0.7, 0.9, 0.1, 0.999])[0] == run(name)[0]


def test_prior_does_not_receive_gradient() -> None:
    logits = torch.zeros(3, requires_grad=True)
    prior = torch.tensor([0.2, 0.5, 0.8], requires_grad=True)
    for name in ("distill", "reloop"):
        loss = get_loss(name)(
            logits,
            torch.tensor([1.0, 0.0, 1.0]),
            prior,
            torch.ones(3, dtype=torch.bool),
            resolve_params(name),
        )
        loss.backward()
        assert prior.grad is None


def test_resolve_params_rejects_unknown_and_out_of_range() -> None:
    assert resolve_params("reloop") == {"alpha": 0.02}
    assert resolve_params("distill", {"beta": 0.2}) == {"beta": 0.2, "temperature": 1.0}
    with pytest.raises(ValueError, match="no parameter 'gamma'"):
        resolve_params("reloop", {"gamma": 1.0})
    with pytest.raises(ValueError, match=r"alpha=1\.5 is out of range"):
        resolve_params("reloop", {"alpha": 1.5})
    with pytest.raises(ValueError, match=r"temperature=0\.0 is out of range"):
        resolve_params("distill", {"temperature": 0.0})
    with pytest.raises(ValueError, match=r"epsilon=1\.0 is out of range"):
        resolve_params("label_smoothing", {"epsilon": 1.0})


def _distill_optimum(tau: float, beta: float = 0.5) -> tuple[float, float]:
    """The one shared logit that minimises distill against a calibrated but noisy teacher.

    Returns (σ(z*), the labels' mean). The teacher's logits scatter around logit(0.07); the labels are
    drawn from the teacher's own probabilities, so on average it is exactly calibrated.
    """
    gen = torch.Generator().manual_seed(0)
    teacher_logits = math.log(0.07 / 0.93) + torch.randn(200_000, generator=gen, dtype=torch.float64)
    teacher = torch.sigmoid(teacher_logits)
    labels = torch.bernoulli(teacher, generator=gen)
    mask = torch.ones_like(labels, dtype=torch.bool)
    z = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    params = resolve_params("distill", {"beta": beta, "temperature": tau})
    opt = torch.optim.LBFGS([z], lr=1.0, max_iter=100, tolerance_grad=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = get_loss("distill")(z.expand_as(labels), labels, teacher, mask, params)
        loss.backward()
        return loss

    opt.step(closure)
    return float(torch.sigmoid(z.detach())), float(labels.mean())


def test_distill_at_temperature_1_keeps_a_calibrated_teacher_calibrated() -> None:
    # Why the default τ is 1. At τ 1 the soft term's optimum is the teacher's mean probability,
    # so a calibrated teacher's noise leaves the student's level alone. At τ 2 the student
    # matches the mean of σ(z_t/2) instead, which is not the CTR: here it lands 14% low.
    at_1, ctr = _distill_optimum(1.0)
    at_2, _ = _distill_optimum(2.0)
    assert at_1 == pytest.approx(ctr, rel=0.02)
    assert abs(at_2 / ctr - 1.0) > 0.1
