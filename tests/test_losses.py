"""Losses against naive per-sample loop references (SimCLR, Chen et al. 2020; ELR, Liu et al. 2020; Active-Passive
Losses, Ma et al. 2020; SupCon, Khosla et al. 2020; paper eq. 8) plus properties."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.config import ClassifyConfig
from engine.method.losses import (
    CELoss,
    ELRLoss,
    MixupBootLoss,
    NFLRCELoss,
    classification_loss,
    cross_entropy,
    nfl,
    nfl_rce,
    nt_xent,
    rce,
    weighted_supcon,
)
from engine.train.loop import Rng

LN_1E4 = math.log(1e-4)


def _softmax(row: list[float]) -> list[float]:
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


def _unit_rows(z: torch.Tensor) -> list[list[float]]:
    rows = z.double().tolist()
    return [[v / math.sqrt(sum(x * x for x in r)) for v in r] for r in rows]


def _log_softmax_contrast(z: list[list[float]], a: int, p: int, tau: float) -> float:
    """log( exp(s_ap / tau) / sum_{k != a} exp(s_ak / tau) ) for unit rows z."""
    sims = [sum(x * y for x, y in zip(z[a], z[k], strict=True)) / tau for k in range(len(z))]
    denom = sum(math.exp(s) for k, s in enumerate(sims) if k != a)
    return sims[p] - math.log(denom)


def _naive_nt_xent(z0: torch.Tensor, z1: torch.Tensor, tau: float) -> list[float]:
    """Per-image loss (mean of the two anchors) with plain loops."""
    n = z0.shape[0]
    z = _unit_rows(torch.cat([z0, z1]))
    per_anchor = [-_log_softmax_contrast(z, a, (a + n) % (2 * n), tau) for a in range(2 * n)]
    return [(per_anchor[i] + per_anchor[i + n]) / 2 for i in range(n)]


def _naive_supcon(
    z0, z1, labels, weights, tau: float, mode: str, *, form: str = "mean-log", min_weight: float = 0.01
) -> list[float]:
    """Weighted SupCon per image with plain loops; mode "plain" (all weights 1), "paper" (own view 1,
    others w_anchor), "reference" (every positive weighted by its own clipped w). form "mean-log":
    -sum_p w log q_p / sum_p w; form "paper": -log( sum_p w q_p / |P| ), q_p the softmax of positive p."""
    n = z0.shape[0]
    z = _unit_rows(torch.cat([z0, z1]))
    y = labels.tolist() * 2
    w = weights.double().tolist() * 2
    per_anchor = []
    for a in range(2 * n):
        weighted_log = weighted_prob = weight_sum = 0.0
        count = 0
        for p in range(2 * n):
            if p == a or y[p] != y[a]:
                continue
            if mode == "plain":
                wp = 1.0
            elif mode == "paper":
                wp = 1.0 if p == (a + n) % (2 * n) else w[a]
            else:
                wp = max(w[p], min_weight)
            log_q = _log_softmax_contrast(z, a, p, tau)
            weighted_log += wp * log_q
            weighted_prob += wp * math.exp(log_q)
            weight_sum += wp
            count += 1
        if weight_sum == 0:
            per_anchor.append(0.0)
        elif form == "paper":
            per_anchor.append(-math.log(weighted_prob / count))
        else:
            per_anchor.append(-weighted_log / weight_sum)
    return [(per_anchor[i] + per_anchor[i + n]) / 2 for i in range(n)]


def _close(actual: torch.Tensor, expected: list[float], tol: float = 1e-5) -> None:
    torch.testing.assert_close(
        actual.double().reshape(-1), torch.tensor(expected, dtype=torch.float64), rtol=tol, atol=tol
    )


# ----------------------------------------------------------------------------- NT-Xent


@pytest.mark.parametrize("n", [2, 5])
@pytest.mark.parametrize("dim", [3, 16])
@pytest.mark.parametrize("tau", [0.07, 0.5, 1.0])
def test_nt_xent_matches_naive_loop(n: int, dim: int, tau: float) -> None:
    torch.manual_seed(n * 100 + dim)
    z0, z1 = torch.randn(n, dim), torch.randn(n, dim)
    expected = _naive_nt_xent(z0, z1, tau)
    _close(nt_xent(z0, z1, temperature=tau, reduction="none"), expected)
    _close(nt_xent(z0, z1, temperature=tau), [sum(expected) / n])
    _close(nt_xent(z0, z1, temperature=tau, reduction="sum"), [sum(expected)])


def test_nt_xent_is_symmetric_in_the_views() -> None:
    torch.manual_seed(1)
    a, b = torch.randn(6, 8), torch.randn(6, 8)
    torch.testing.assert_close(nt_xent(a, b, reduction="none"), nt_xent(b, a, reduction="none"))


@pytest.mark.parametrize("n", [2, 4])
@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_nt_xent_closed_form_for_identical_views_orthogonal_images(n: int, tau: float) -> None:
    """Positive similarity 1, all 2n-2 negatives 0: loss = log(1 + (2n - 2) exp(-1/tau)) for every anchor."""
    z = torch.eye(n, 2 * n) * 3.0  # orthogonal rows; the scale must not matter (normalised inside)
    expected = math.log(1 + (2 * n - 2) * math.exp(-1 / tau))
    _close(nt_xent(z, z.clone(), temperature=tau, reduction="none"), [expected] * n)


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_nt_xent_gradients_are_finite(tau: float) -> None:
    torch.manual_seed(2)
    base = torch.randn(8, 16)
    z0 = (base * 1e3).requires_grad_(True)  # large norms and near-duplicate views
    z1 = (base * 1e3 + 1e-3 * torch.randn(8, 16)).requires_grad_(True)
    nt_xent(z0, z1, temperature=tau).backward()
    assert torch.isfinite(z0.grad).all() and torch.isfinite(z1.grad).all()
    assert z0.grad.abs().sum() > 0


def test_nt_xent_runs_in_fp32_under_autocast() -> None:
    torch.manual_seed(3)
    z0, z1 = torch.randn(16, 32), torch.randn(16, 32)
    expected = nt_xent(z0, z1, temperature=0.07)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = nt_xent(z0.bfloat16().float(), z1.bfloat16().float(), temperature=0.07)
        got_bf16_inputs = nt_xent(z0.bfloat16(), z1.bfloat16(), temperature=0.07)
    assert got.dtype == torch.float32 and got_bf16_inputs.dtype == torch.float32
    # bf16 matmul would be off by ~1e-2 at tau = 0.07; fp32 agrees up to the bf16 rounding of the inputs
    ref = nt_xent(z0.bfloat16().float(), z1.bfloat16().float(), temperature=0.07)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_bf16_inputs, ref, rtol=1e-6, atol=1e-6)
    assert abs(float(got) - float(expected)) < 0.05


@pytest.mark.parametrize(
    ("z0", "z1", "kwargs", "message"),
    [
        (torch.randn(4, 3), torch.randn(4, 3), {"temperature": 0.0}, "temperature must be > 1e-8"),
        (torch.randn(4, 3), torch.randn(4, 3), {"temperature": -1.0}, "temperature must be > 1e-8"),
        (torch.randn(4, 3), torch.randn(5, 3), {}, "must both have shape"),
        (torch.randn(4), torch.randn(4), {}, "must both have shape"),
        (torch.randn(1, 3), torch.randn(1, 3), {}, "at least 2 images"),
        (torch.randn(4, 3), torch.randn(4, 3), {"reduction": "avg"}, "reduction must be one of"),
    ],
)
def test_nt_xent_rejects_bad_arguments(z0, z1, kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        nt_xent(z0, z1, **kwargs)


# ----------------------------------------------------------------------------- CE, NFL, RCE


def _naive_nfl(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> list[float]:
    out = []
    for row, y in zip(logits.double().tolist(), targets.tolist(), strict=True):
        p = _softmax(row)
        fl = [-((1 - pk) ** gamma) * math.log(pk) for pk in p]
        out.append(alpha * fl[y] / sum(fl))
    return out


def _naive_rce(logits: torch.Tensor, targets: torch.Tensor, beta: float, log_zero: float) -> list[float]:
    out = []
    for row, y in zip(logits.double().tolist(), targets.tolist(), strict=True):
        p = [min(max(pk, 1e-7), 1.0) for pk in _softmax(row)]
        out.append(-beta * sum(pk * (0.0 if k == y else log_zero) for k, pk in enumerate(p)))
    return out


@pytest.mark.parametrize(("n", "c"), [(1, 2), (7, 3), (16, 10)])
def test_cross_entropy_matches_naive_loop(n: int, c: int) -> None:
    torch.manual_seed(n + c)
    logits, targets = torch.randn(n, c) * 3, torch.randint(0, c, (n,))
    expected = [-math.log(_softmax(r)[y]) for r, y in zip(logits.double().tolist(), targets.tolist(), strict=True)]
    _close(cross_entropy(logits, targets, reduction="none"), expected)
    _close(cross_entropy(logits, targets), [sum(expected) / n])
    _close(cross_entropy(logits, targets, reduction="sum"), [sum(expected)])


@pytest.mark.parametrize(("n", "c"), [(5, 2), (16, 10)])
@pytest.mark.parametrize(("alpha", "gamma"), [(1.0, 0.5), (10.0, 2.0), (1.0, 0.0)])
def test_nfl_matches_naive_loop(n: int, c: int, alpha: float, gamma: float) -> None:
    torch.manual_seed(n * c)
    logits, targets = torch.randn(n, c) * 2, torch.randint(0, c, (n,))
    expected = _naive_nfl(logits, targets, alpha, gamma)
    _close(nfl(logits, targets, alpha=alpha, gamma=gamma, reduction="none"), expected)
    _close(nfl(logits, targets, alpha=alpha, gamma=gamma), [sum(expected) / n])


def test_nfl_with_gamma_zero_is_nce() -> None:
    torch.manual_seed(4)
    logits, targets = torch.randn(12, 5), torch.randint(0, 5, (12,))
    log_p = F.log_softmax(logits, dim=1)
    nce = log_p.gather(1, targets[:, None]).squeeze(1) / log_p.sum(dim=1)
    torch.testing.assert_close(nfl(logits, targets, gamma=0.0, reduction="none"), nce)


def test_nfl_gradient_follows_the_reference_code() -> None:
    """Reference semantics: focal factors are constants for autograd, the log terms are not
    (normalizor = sum(-(1 - logpt.data.exp()) ** gamma * logpt))."""
    torch.manual_seed(5)
    alpha, gamma = 2.0, 0.5
    logits, targets = torch.randn(9, 4) * 2, torch.randint(0, 4, (9,))
    x = logits.clone().requires_grad_(True)
    nfl(x, targets, alpha=alpha, gamma=gamma, reduction="sum").backward()

    y = logits.clone().requires_grad_(True)
    log_p = F.log_softmax(y, dim=1)
    focal = (1 - log_p.detach().exp()).pow(gamma)
    normaliser = (-focal * log_p).sum(dim=1)
    own = focal.gather(1, targets[:, None]).squeeze(1) * -log_p.gather(1, targets[:, None]).squeeze(1)
    (alpha * own / normaliser).sum().backward()
    torch.testing.assert_close(x.grad, y.grad)

    # neither the plain re-weighted cross-entropy (normaliser constant) ...
    z = logits.clone().requires_grad_(True)
    p = F.softmax(logits, dim=1)
    weight = alpha * (1 - p.gather(1, targets[:, None]).squeeze(1)).pow(gamma) / (-(1 - p).pow(gamma) * p.log()).sum(1)
    (weight * F.cross_entropy(z, targets, reduction="none")).sum().backward()
    assert not torch.allclose(x.grad, z.grad, atol=1e-4)
    # ... nor the gradient of the normalised loss with the focal factors differentiated too
    t = logits.clone().requires_grad_(True)
    pt = F.softmax(t, dim=1)
    fl = -(1 - pt).pow(gamma) * pt.log()
    (alpha * fl.gather(1, targets[:, None]).squeeze(1) / fl.sum(dim=1)).sum().backward()
    assert not torch.allclose(x.grad, t.grad, atol=1e-4)


@pytest.mark.parametrize(("beta", "log_zero"), [(1.0, LN_1E4), (0.1, -4.0)])
def test_rce_exact_value(beta: float, log_zero: float) -> None:
    torch.manual_seed(6)
    logits, targets = torch.randn(10, 6), torch.randint(0, 6, (10,))
    p_y = F.softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
    torch.testing.assert_close(
        rce(logits, targets, beta=beta, log_zero=log_zero, reduction="none"), -log_zero * beta * (1 - p_y)
    )


def test_rce_default_log_zero_is_ln_1e4_and_clamp_matches_naive() -> None:
    torch.manual_seed(7)
    logits, targets = torch.randn(8, 10) * 20, torch.randint(0, 10, (8,))  # many p_k < 1e-7
    _close(rce(logits, targets, reduction="none"), _naive_rce(logits, targets, 1.0, -9.2103))
    assert abs(-9.2103 - LN_1E4) < 1e-4


@pytest.mark.parametrize(("alpha", "beta"), [(1.0, 1.0), (10.0, 0.1)])
def test_nfl_rce_is_the_sum(alpha: float, beta: float) -> None:
    torch.manual_seed(8)
    logits, targets = torch.randn(11, 10), torch.randint(0, 10, (11,))
    expected = [
        a + b
        for a, b in zip(
            _naive_nfl(logits, targets, alpha, 0.5), _naive_rce(logits, targets, beta, -9.2103), strict=True
        )
    ]
    _close(nfl_rce(logits, targets, alpha=alpha, beta=beta, reduction="none"), expected)
    _close(nfl_rce(logits, targets, alpha=alpha, beta=beta, reduction="sum"), [sum(expected)])


@pytest.mark.parametrize("loss_name", ["ce", "nfl", "rce", "nfl+rce", "elr", "mixup-boot"])
def test_classification_losses_have_finite_gradients_for_extreme_logits(loss_name: str) -> None:
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 1e4, 0.0], [0.0, 0.0, 0.0], [50.0, -50.0, 20.0]])
    targets = torch.tensor([0, 0, 2, 1])
    x = logits.clone().requires_grad_(True)
    funcs = {
        "ce": lambda: cross_entropy(x, targets),
        "nfl": lambda: nfl(x, targets),
        "rce": lambda: rce(x, targets),
        "nfl+rce": lambda: nfl_rce(x, targets),
        "elr": lambda: ELRLoss(4, 3)(x, targets, torch.arange(4)),
        "mixup-boot": lambda: _bootstrapping(MixupBootLoss(4, 3), [0.9, 0.1, 0.5, 0.99]).mixed(
            x, targets, torch.arange(4), perm=torch.tensor([1, 0, 3, 2]), lam=0.6, guess_logits=logits),
    }
    loss = funcs[loss_name]()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: cross_entropy(torch.randn(3, 4), torch.tensor([0, 1])), r"targets must have shape \(3,\)"),
        (lambda: cross_entropy(torch.randn(3), torch.tensor([0, 1, 2])), "logits must have shape"),
        (lambda: cross_entropy(torch.randn(3, 4), torch.rand(3)), "integer class indices"),
        (lambda: nfl(torch.randn(3, 4), torch.tensor([0, 1, 2]), gamma=-1.0), "gamma must be >= 0"),
        (lambda: rce(torch.randn(3, 4), torch.tensor([0, 1, 2]), log_zero=4.0), "log_zero must be negative"),
        (lambda: nfl_rce(torch.randn(3, 4), torch.tensor([0, 1, 2]), reduction="max"), "reduction must be one of"),
    ],
)
def test_classification_losses_reject_bad_arguments(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------- ELR


def _naive_elr_step(target: list[list[float]], logits, targets, index, lam: float, beta: float) -> list[float]:
    """One ELR step with loops; mutates `target` exactly as the reference (update first)."""
    out = []
    for row, y, i in zip(logits.double().tolist(), targets.tolist(), index.tolist(), strict=True):
        p = [min(max(v, 1e-4), 1 - 1e-4) for v in _softmax(row)]
        s = sum(p)
        target[i] = [beta * t + (1 - beta) * pk / s for t, pk in zip(target[i], p, strict=True)]
        ce = -math.log(_softmax(row)[y])
        out.append(ce + lam * math.log(1 - sum(t * pk for t, pk in zip(target[i], p, strict=True))))
    return out


@pytest.mark.parametrize(("n", "c", "lam", "beta"), [(6, 3, 3.0, 0.7), (10, 10, 7.0, 0.9)])
def test_elr_matches_naive_loop_over_two_steps(n: int, c: int, lam: float, beta: float) -> None:
    torch.manual_seed(n + c)
    loss = ELRLoss(n, c, lam=lam, beta=beta)
    naive_target = [[0.0] * c for _ in range(n)]
    for _ in range(2):
        index = torch.randperm(n)[: n // 2 + 1]
        logits, targets = torch.randn(len(index), c) * 2, torch.randint(0, c, (len(index),))
        expected = _naive_elr_step(naive_target, logits, targets, index, lam, beta)
        _close(loss(logits, targets, index, reduction="none"), expected)
    torch.testing.assert_close(
        loss.target.double(), torch.tensor(naive_target, dtype=torch.float64), rtol=1e-6, atol=1e-7
    )


def test_elr_updates_target_before_the_loss_by_hand() -> None:
    loss = ELRLoss(5, 2, lam=3.0, beta=0.7)
    logits = torch.tensor([[0.0, math.log(3.0)]])  # p = (0.25, 0.75)
    value = loss(logits, torch.tensor([0]), torch.tensor([3]))
    t = torch.tensor([0.3 * 0.25, 0.3 * 0.75])  # (1 - beta) * p, buffer started at 0
    torch.testing.assert_close(loss.target[3], t)
    assert loss.target[[0, 1, 2, 4]].abs().sum() == 0  # only row `index` changed
    expected = -math.log(0.25) + 3.0 * math.log(1 - (0.3 * 0.25**2 + 0.3 * 0.75**2))
    assert abs(float(value) - expected) < 1e-5
    # second visit: EMA of the normalised prediction
    loss(torch.tensor([[0.0, 0.0]]), torch.tensor([1]), torch.tensor([3]))
    torch.testing.assert_close(loss.target[3], 0.7 * t + 0.3 * torch.tensor([0.5, 0.5]))


def test_elr_eval_mode_leaves_target_alone() -> None:
    loss = ELRLoss(4, 3).eval()
    value = loss(torch.randn(2, 3), torch.tensor([0, 1]), torch.tensor([0, 1]), reduction="none")
    assert loss.target.abs().sum() == 0 and value.shape == (2,)


def test_elr_state_dict_round_trip() -> None:
    torch.manual_seed(9)
    loss = ELRLoss(8, 4)
    loss(torch.randn(8, 4), torch.randint(0, 4, (8,)), torch.arange(8))
    assert set(loss.state_dict()) == {"target"}
    buffer = io.BytesIO()
    torch.save(loss.state_dict(), buffer)
    buffer.seek(0)
    restored = ELRLoss(8, 4)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(restored.target, loss.target)
    logits, targets, index = torch.randn(3, 4), torch.tensor([0, 1, 2]), torch.tensor([5, 1, 7])
    torch.testing.assert_close(restored(logits, targets, index), loss(logits, targets, index))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: ELRLoss(0, 3), "num_samples >= 1"),
        (lambda: ELRLoss(4, 1), "num_classes >= 2"),
        (lambda: ELRLoss(4, 3, beta=1.0), r"beta must be in \[0, 1\)"),
        (lambda: ELRLoss(4, 3, lam=-1.0), "lambda must be >= 0"),
        (lambda: ELRLoss(4, 3)(torch.randn(2, 5), torch.tensor([0, 1]), torch.tensor([0, 1])), "built for 3 classes"),
        (lambda: ELRLoss(4, 3)(torch.randn(2, 3), torch.tensor([0, 1]), torch.tensor([0, 4])), "index out of range"),
        (lambda: ELRLoss(4, 3)(torch.randn(2, 3), torch.tensor([0, 1]), torch.tensor([0])), "index must be integer"),
    ],
)
def test_elr_rejects_bad_arguments(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


def test_elr_rejected_batch_changes_nothing() -> None:
    loss = ELRLoss(4, 3)
    with pytest.raises(ValueError):
        loss(torch.randn(2, 3), torch.tensor([0, 1]), torch.tensor([0, 9]))
    assert loss.target.abs().sum() == 0


# ----------------------------------------------------------------------------- mixup + dynamic bootstrapping


def _bootstrapping(loss: MixupBootLoss, w: list[float]) -> MixupBootLoss:
    """The loss as after a mixture fit that gave these noise probabilities."""
    loss.noisy_prob.copy_(torch.tensor(w))
    loss.refits = 1
    return loss


def _xent(target: list[float], probs: list[float]) -> float:
    return -sum(t * math.log(p) for t, p in zip(target, probs, strict=True))


# Two images, two classes: the mixed images' predictions are (0.5, 0.5) and (0.75, 0.25); the network's
# predictions for the un-mixed images are class 1 (logits 0, 5) and class 0 (logits 4, 0).
MIXED = torch.tensor([[0.0, 0.0], [math.log(3.0), 0.0]])
GUESS = torch.tensor([[0.0, 5.0], [4.0, 0.0]])
GIVEN, INDEX, SWAP = torch.tensor([0, 1]), torch.tensor([0, 1]), torch.tensor([1, 0])


def test_mixup_boot_hard_targets_by_hand() -> None:
    loss = _bootstrapping(MixupBootLoss(2, 2, reg=0.0), [0.2, 0.6])
    out = loss.mixed(MIXED, GIVEN, INDEX, perm=SWAP, lam=0.7, guess_logits=GUESS, reduction="none")
    t0 = [0.8, 0.2]  # (1 - 0.2) * given class 0 + 0.2 * predicted class 1
    t1 = [0.6, 0.4]  # (1 - 0.6) * given class 1 + 0.6 * predicted class 0
    mixed0 = [0.7 * a + 0.3 * b for a, b in zip(t0, t1, strict=True)]  # [0.74, 0.26]
    mixed1 = [0.7 * b + 0.3 * a for a, b in zip(t0, t1, strict=True)]  # [0.66, 0.34]
    _close(out, [_xent(mixed0, [0.5, 0.5]), _xent(mixed1, [0.75, 0.25])])
    assert out[1].item() == pytest.approx(0.66 * -math.log(0.75) + 0.34 * -math.log(0.25), abs=1e-6)


def test_mixup_boot_soft_targets_by_hand() -> None:
    loss = _bootstrapping(MixupBootLoss(2, 2, target="soft", reg=0.0), [0.2, 0.6])
    out = loss.mixed(MIXED, GIVEN, INDEX, perm=SWAP, lam=0.7, guess_logits=GUESS, reduction="none")
    q0, q1 = _softmax([0.0, 5.0]), _softmax([4.0, 0.0])
    t0 = [0.8 * 1 + 0.2 * q0[0], 0.2 * q0[1]]
    t1 = [0.6 * q1[0], 0.4 * 1 + 0.6 * q1[1]]
    mixed0 = [0.7 * a + 0.3 * b for a, b in zip(t0, t1, strict=True)]
    mixed1 = [0.7 * b + 0.3 * a for a, b in zip(t0, t1, strict=True)]
    _close(out, [_xent(mixed0, [0.5, 0.5]), _xent(mixed1, [0.75, 0.25])])


def test_mixup_boot_before_the_first_fit_is_plain_mixup() -> None:
    loss = MixupBootLoss(2, 2, reg=0.0)
    loss.noisy_prob.fill_(0.9)  # ignored: no mixture fitted yet
    out = loss.mixed(MIXED, GIVEN, INDEX, perm=SWAP, lam=0.7, guess_logits=None, reduction="none")
    _close(out, [_xent([0.7, 0.3], [0.5, 0.5]), _xent([0.3, 0.7], [0.75, 0.25])])
    assert not loss.bootstrapping


def test_mixup_boot_regulariser_is_kl_of_the_prior_and_the_mean_prediction() -> None:
    plain = MixupBootLoss(2, 2, reg=0.0)(MIXED, GIVEN, INDEX, reduction="none")
    out = MixupBootLoss(2, 2, reg=2.0)(MIXED, GIVEN, INDEX, reduction="none")
    mean_p = [0.625, 0.375]
    kl = 0.5 * math.log(0.5 / mean_p[0]) + 0.5 * math.log(0.5 / mean_p[1])
    _close(out - plain, [2.0 * kl, 2.0 * kl])
    skewed = classification_loss(ClassifyConfig(loss="mixup-boot", boot_reg=1.0), num_samples=4, num_classes=2,
                                 labels=torch.tensor([0, 0, 0, 1]))
    torch.testing.assert_close(skewed.prior, torch.tensor([0.75, 0.25]))  # the given labels' frequencies
    kl_skewed = 0.75 * math.log(0.75 / mean_p[0]) + 0.25 * math.log(0.25 / mean_p[1])
    _close(skewed(MIXED, GIVEN, INDEX, reduction="none") - plain, [kl_skewed, kl_skewed])


def test_mixup_boot_unmixed_forward_is_lambda_one_with_its_own_prediction() -> None:
    torch.manual_seed(3)
    logits, targets, index = torch.randn(6, 4), torch.randint(0, 4, (6,)), torch.arange(6)
    loss = _bootstrapping(MixupBootLoss(6, 4), [0.1, 0.9, 0.3, 0.5, 0.7, 0.2])
    direct = loss(logits, targets, index, reduction="none")
    via_mixed = loss.mixed(logits, targets, index, perm=torch.randperm(6), lam=1.0, guess_logits=logits,
                           reduction="none")
    torch.testing.assert_close(direct, via_mixed)


def test_mixup_boot_refit_sets_the_noise_probabilities_from_the_losses() -> None:
    rng = np.random.default_rng(0)
    losses = np.r_[3 * rng.beta(2, 8, 70), 3 * rng.beta(8, 2, 30)]
    loss = MixupBootLoss(100, 3)
    summary = loss.refit(losses)
    assert loss.bootstrapping and loss.refits == 1
    w = loss.noisy_prob.numpy()
    assert w[:70].mean() < 0.2 < 0.8 < w[70:].mean()
    assert w.min() >= 1e-4 and w.max() <= 1 - 1e-4
    assert set(summary) == {"bmm_noisy_share", "bmm_mean_w"} and 0.2 < summary["bmm_noisy_share"] < 0.4
    loss.refit(np.ones(100))  # no split in the losses: every image trusted again
    assert loss.refits == 2 and float(loss.noisy_prob.abs().max()) == 0.0
    with pytest.raises(ValueError, match="refit needs 100 losses"):
        loss.refit(np.ones(99))


def test_mixup_boot_state_dict_round_trip_carries_the_noise_probabilities() -> None:
    loss = MixupBootLoss(8, 4)
    loss.refit(np.r_[np.full(4, 0.1), np.full(4, 2.0)] + np.linspace(0, 0.01, 8))
    buffer = io.BytesIO()
    torch.save(loss.state_dict(), buffer)
    buffer.seek(0)
    restored = MixupBootLoss(8, 4)
    restored.load_state_dict(torch.load(buffer, weights_only=True))  # the checkpoints' loader
    torch.testing.assert_close(restored.noisy_prob, loss.noisy_prob)
    assert restored.refits == 1 and restored.bootstrapping


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: MixupBootLoss(4, 3, target="medium"), "target must be one of hard, soft"),
        (lambda: MixupBootLoss(4, 3, reg=-1.0), "reg must be >= 0"),
        (lambda: MixupBootLoss(0, 3), "num_samples >= 1"),
        (lambda: MixupBootLoss(4, 1), "num_classes >= 2"),
        (lambda: MixupBootLoss(4, 3, class_prior=torch.ones(2)), "class_prior must be 3"),
        (lambda: MixupBootLoss(4, 3)(torch.randn(2, 5), torch.tensor([0, 1]), torch.tensor([0, 1])),
         "built for 3 classes"),
        (lambda: MixupBootLoss(4, 3)(torch.randn(2, 3), torch.tensor([0, 1]), torch.tensor([0, 4])), "out of range"),
        (lambda: MixupBootLoss(4, 3).mixed(torch.randn(2, 3), torch.tensor([0, 1]), torch.tensor([0, 1]),
                                           perm=torch.tensor([1, 0]), lam=1.5, guess_logits=None), "lam must be"),
        (lambda: _bootstrapping(MixupBootLoss(2, 3), [0.5, 0.5]).mixed(
            torch.randn(2, 3), torch.tensor([0, 1]), torch.tensor([0, 1]), perm=torch.tensor([1, 0]), lam=0.5,
            guess_logits=None), "needs the network's logits"),
    ],
)
def test_mixup_boot_rejects_bad_arguments(call, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# ----------------------------------------------------------------------------- classification_loss


@pytest.mark.parametrize(("name", "cls"), [("ce", CELoss), ("nfl+rce", NFLRCELoss), ("elr", ELRLoss),
                                           ("mixup-boot", MixupBootLoss)])
def test_classification_loss_builds_each_loss_with_one_interface(name: str, cls: type) -> None:
    torch.manual_seed(10)
    cfg = ClassifyConfig(loss=name, nfl_alpha=10.0, rce_beta=0.1, elr_lambda=7.0, elr_beta=0.9)
    loss = classification_loss(cfg, num_samples=20, num_classes=5)
    assert isinstance(loss, cls)
    logits, targets, index = torch.randn(6, 5), torch.randint(0, 5, (6,)), torch.arange(6)
    per_sample = loss(logits, targets, index, reduction="none")
    assert per_sample.shape == (6,)
    expected = {
        "ce": lambda: cross_entropy(logits, targets, reduction="none"),
        "nfl+rce": lambda: nfl_rce(logits, targets, alpha=10.0, beta=0.1, reduction="none"),
        "elr": lambda: ELRLoss(20, 5, lam=7.0, beta=0.9)(logits, targets, index, reduction="none"),
        "mixup-boot": lambda: MixupBootLoss(20, 5)(logits, targets, index, reduction="none"),
    }[name]()
    torch.testing.assert_close(per_sample, expected)
    assert ("target" in loss.state_dict()) == (name == "elr")


def test_classification_loss_rejects_unknown_name() -> None:
    with pytest.raises(ValueError, match="loss must be one of ce, nfl\\+rce, elr, mixup-boot, got 'mae'"):
        classification_loss(ClassifyConfig(loss="mae"), num_samples=4, num_classes=3)  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- weighted SupCon


def _supcon_inputs(n: int, dim: int, classes: int, seed: int):
    torch.manual_seed(seed)
    return torch.randn(n, dim), torch.randn(n, dim), torch.randint(0, classes, (n,)), torch.rand(n)


@pytest.mark.parametrize(("n", "dim", "classes"), [(2, 4, 1), (6, 8, 3), (10, 5, 4)])
@pytest.mark.parametrize("tau", [0.07, 0.5])
@pytest.mark.parametrize("form", ["mean-log", "paper"])
def test_weighted_supcon_with_unit_weights_is_plain_supcon(n: int, dim: int, classes: int, tau: float,
                                                           form: str) -> None:
    z0, z1, labels, _ = _supcon_inputs(n, dim, classes, n + dim)
    ones = torch.ones(n)
    expected = _naive_supcon(z0, z1, labels, ones, tau, "plain", form=form)
    for weighting in ("paper", "reference"):
        got = weighted_supcon(z0, z1, labels, ones, temperature=tau, weighting=weighting, form=form,
                              reduction="none")
        _close(got, expected)


@pytest.mark.parametrize(("n", "classes"), [(6, 2), (9, 3)])
@pytest.mark.parametrize("weighting", ["paper", "reference"])
@pytest.mark.parametrize("form", ["mean-log", "paper"])
def test_weighted_supcon_matches_naive_loop(n: int, classes: int, weighting: str, form: str) -> None:
    z0, z1, labels, weights = _supcon_inputs(n, 8, classes, 3 * n)
    weights[0] = 0.0  # exercises the 0.01 clip of the reference variant
    expected = _naive_supcon(z0, z1, labels, weights, 0.07, weighting, form=form)
    kwargs = {"weighting": weighting, "form": form}
    _close(weighted_supcon(z0, z1, labels, weights, reduction="none", **kwargs), expected)
    _close(weighted_supcon(z0, z1, labels, weights, **kwargs), [sum(expected) / n])
    _close(weighted_supcon(z0, z1, labels, weights, reduction="sum", **kwargs), [sum(expected)])


@pytest.mark.parametrize("form", ["mean-log", "paper"])
@pytest.mark.parametrize("min_weight", [0.0, 0.3])
def test_reference_weighting_clips_at_the_given_min_weight(form: str, min_weight: float) -> None:
    z0, z1, _, weights = _supcon_inputs(8, 8, 2, 21)
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    weights[:3] = torch.tensor([0.0, 0.005, 0.2])  # below both 0.01 and 0.3
    expected = _naive_supcon(z0, z1, labels, weights, 0.07, "reference", form=form, min_weight=min_weight)
    got = weighted_supcon(z0, z1, labels, weights, weighting="reference", form=form, min_weight=min_weight,
                          reduction="none")
    _close(got, expected)
    default_clip = weighted_supcon(z0, z1, labels, weights, weighting="reference", form=form, reduction="none")
    assert (got[:4] - default_clip[:4]).abs().max() > 1e-3  # the clip is not the default 0.01 one


def test_paper_form_is_below_mean_log_form_with_unit_weights() -> None:
    """Jensen: -log(mean q) <= -mean(log q), equal for an anchor with a single positive (its own view)."""
    z0, z1, _, _ = _supcon_inputs(10, 6, 1, 5)
    labels = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2, 2, 3])  # image 9 is alone in its class
    ones = torch.ones(10)
    paper = weighted_supcon(z0, z1, labels, ones, form="paper", reduction="none")
    mean_log = weighted_supcon(z0, z1, labels, ones, form="mean-log", reduction="none")
    assert (paper[:9] < mean_log[:9] - 1e-4).all()
    torch.testing.assert_close(paper[9], mean_log[9])
    torch.testing.assert_close(paper[9], nt_xent(z0, z1, temperature=0.07, reduction="none")[9])


def test_forms_agree_when_every_anchor_has_only_its_own_view() -> None:
    """Distinct labels: |P| = 1 with weight 1, so both forms are NT-Xent whatever the weights."""
    z0, z1, _, weights = _supcon_inputs(6, 8, 2, 17)
    labels = torch.arange(6)
    instance = nt_xent(z0, z1, temperature=0.1, reduction="none")
    for form in ("mean-log", "paper"):
        torch.testing.assert_close(weighted_supcon(z0, z1, labels, weights, temperature=0.1, form=form,
                                                   reduction="none"), instance)


@pytest.mark.parametrize("form", ["mean-log", "paper"])
def test_paper_weighting_keeps_own_view_weight_one(form: str) -> None:
    """An anchor with clean probability 0 keeps only its instance-discrimination (NT-Xent) term; the
    paper form still divides by |P(i)| = 11 (a constant: the gradient is NT-Xent's)."""
    z0, z1, _, weights = _supcon_inputs(6, 8, 2, 11)
    labels = torch.zeros(6, dtype=torch.long)  # every other view is a positive
    weights[2] = 0.0
    got = weighted_supcon(z0, z1, labels, weights, temperature=0.2, form=form, reduction="none")
    instance = nt_xent(z0, z1, temperature=0.2, reduction="none")
    offset = math.log(11) if form == "paper" else 0.0
    torch.testing.assert_close(got[2], instance[2] + offset)
    assert not torch.allclose(got[3], instance[3] + offset)  # weighted positives change the others


@pytest.mark.parametrize("form", ["mean-log", "paper"])
def test_zero_weights_drop_out_of_the_reference_weighting(form: str) -> None:
    """min_weight 0: an anchor whose positives all weigh 0 contributes 0 and no gradient; an anchor with
    some weighted positives only sees those (the paper form still counts all of P(i))."""
    z0, z1, _, _ = _supcon_inputs(4, 8, 2, 19)
    z0.requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1])
    weights = torch.tensor([0.0, 0.0, 0.0, 0.5])
    got = weighted_supcon(z0, z1, labels, weights, weighting="reference", form=form, min_weight=0.0,
                          reduction="none")
    expected = _naive_supcon(z0.detach(), z1, labels, weights, 0.07, "reference", form=form, min_weight=0.0)
    _close(got, expected)
    assert got[0] == 0 and got[1] == 0 and got[2] > 0
    (unweighted,) = torch.autograd.grad(got[:2].sum(), z0, retain_graph=True)
    assert (unweighted == 0).all()  # the rows of images 0 and 1 give no gradient, not NaN
    got.sum().backward()
    assert torch.isfinite(z0.grad).all() and z0.grad.abs().sum() > 0


@pytest.mark.parametrize("form", ["mean-log", "paper"])
@pytest.mark.parametrize(("weighting", "min_weight"), [("reference", 0.01), ("reference", 0.0), ("paper", 0.01)])
def test_weighted_supcon_is_finite_with_fp32_gradients_at_low_temperature(form: str, weighting: str,
                                                                         min_weight: float) -> None:
    z0, z1, labels, _ = _supcon_inputs(8, 16, 2, 12)
    a = (z0 * 1e3).requires_grad_(True)
    b = (z0 * 1e3 + 1e-3 * z1).requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = weighted_supcon(a, b, labels, torch.zeros(8), temperature=0.07, weighting=weighting, form=form,
                               min_weight=min_weight)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


def test_finetune_form_is_a_checked_setting() -> None:
    from dataclasses import replace

    from engine.config import RunConfig, validate, with_overrides

    cfg = RunConfig()
    assert cfg.finetune.form == "mean-log"
    assert with_overrides(cfg, {"finetune.form": "paper"}).finetune.form == "paper"
    with pytest.raises(ValueError, match=r"finetune.form must be one of \('mean-log', 'paper'\), got 'mean'"):
        with_overrides(cfg, {"finetune.form": "mean"})
    with pytest.raises(ValueError, match="finetune.form must be mean-log or paper, got 'log'"):
        validate(replace(cfg, finetune=replace(cfg.finetune, form="log")))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"weighting": "column"}, "weighting must be one of paper, reference"),
        ({"form": "mean"}, "form must be one of mean-log, paper"),
        ({"labels": torch.zeros(3, dtype=torch.long)}, r"labels and weights must have shape \(4,\)"),
        ({"weights": torch.ones(4, 1)}, r"labels and weights must have shape \(4,\)"),
        ({"temperature": 0.0}, "temperature must be > 1e-8"),
        ({"reduction": "batch"}, "reduction must be one of"),
    ],
)
def test_weighted_supcon_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    args = {"z0": torch.randn(4, 3), "z1": torch.randn(4, 3), "labels": torch.zeros(4, dtype=torch.long)}
    args["weights"] = torch.ones(4)
    args.update(kwargs)
    z0, z1, labels, weights = args.pop("z0"), args.pop("z1"), args.pop("labels"), args.pop("weights")
    with pytest.raises(ValueError, match=message):
        weighted_supcon(z0, z1, labels, weights, **args)


# ----------------------------------------------------------------------------- shapes of every reduction


def _all_losses(reduction: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(13)
    logits, targets, index = torch.randn(5, 4), torch.randint(0, 4, (5,)), torch.arange(5)
    z0, z1, labels, weights = torch.randn(5, 8), torch.randn(5, 8), torch.randint(0, 2, (5,)), torch.rand(5)
    return {
        "nt_xent": nt_xent(z0, z1, reduction=reduction),
        "cross_entropy": cross_entropy(logits, targets, reduction=reduction),
        "nfl": nfl(logits, targets, reduction=reduction),
        "rce": rce(logits, targets, reduction=reduction),
        "nfl_rce": nfl_rce(logits, targets, reduction=reduction),
        "elr": ELRLoss(5, 4)(logits, targets, index, reduction=reduction),
        "mixup_boot": _bootstrapping(MixupBootLoss(5, 4), [0.1, 0.9, 0.5, 0.2, 0.7]).mixed(
            logits, targets, index, perm=torch.tensor([4, 3, 2, 1, 0]), lam=0.55, guess_logits=logits.flip(0),
            reduction=reduction),
        "supcon_paper": weighted_supcon(z0, z1, labels, weights, reduction=reduction),
        "supcon_reference": weighted_supcon(z0, z1, labels, weights, weighting="reference", reduction=reduction),
        "supcon_paper_form": weighted_supcon(z0, z1, labels, weights, form="paper", reduction=reduction),
    }


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_every_loss_has_the_shape_of_its_reduction(reduction: str) -> None:
    per_sample = _all_losses("none")
    for name, value in _all_losses(reduction).items():
        assert value.shape == ((5,) if reduction == "none" else ()), name
        assert value.dtype == torch.float32, name
        expected = {"none": per_sample[name], "mean": per_sample[name].mean(), "sum": per_sample[name].sum()}
        torch.testing.assert_close(value, expected[reduction], msg=name)


# ----------------------------------------------------------------------------- the fine-tuning stage's call


@pytest.mark.parametrize(("weighting", "form", "min_weight"), [("reference", "paper", 0.0), ("paper", "mean-log", 0.2)])
def test_finetune_passes_its_loss_settings_to_weighted_supcon(tmp_path, monkeypatch, weighting: str, form: str,
                                                              min_weight: float) -> None:
    """finetune.min_weight, form, weighting and temperature reach the loss (min_weight used to be dropped,
    so the reference weighting clipped at its own 0.01)."""
    import numpy as np

    from engine.config import AugmentConfig, FinetuneConfig, ModelConfig
    from engine.method.augment import BatchAugment
    from engine.method.models import build_network
    from engine.runs.progress import Progress
    from engine.train import finetune
    from engine.train.device import make_runtime
    from engine.train.trainset import TrainSet

    calls: list[dict] = []

    def spy(z0, z1, labels, weights, **kwargs):
        calls.append({"weights": weights.clone(), **kwargs})
        return weighted_supcon(z0, z1, labels, weights, **kwargs)

    monkeypatch.setattr(finetune, "weighted_supcon", spy)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(8, 16, 16, 3), dtype=np.uint8)
    labels = np.array([0, 1] * 4)
    rt = make_runtime("cpu", "fp32")
    net = build_network(ModelConfig(stem="standard"), image_size=16, num_classes=2, device_type="cpu")
    targets = finetune.FinetuneTargets(labels=labels, weights=np.array([0.0, 1.0] * 4, np.float32),
                                       keep=np.ones(8, bool), n_decided=0, n_discarded=0)
    cfg = FinetuneConfig(epochs=1, batch_size=8, temperature=0.2, weighting=weighting, form=form,
                         min_weight=min_weight)
    aug = BatchAugment(AugmentConfig(), out_size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    finetune.finetune_supcon(net, TrainSet.from_numpy(images, labels, rt.device), targets, cfg, aug, rt,
                             rng=Rng.for_stream(0, "finetune", "cpu"), last_ckpt=tmp_path / "supcon.last.pt", progress=Progress.silent())
    assert len(calls) == 1  # 8 images, batch 8, one epoch: one step
    settings = {key: calls[0].get(key, "not passed") for key in ("temperature", "weighting", "form", "min_weight")}
    assert settings == {"temperature": 0.2, "weighting": weighting, "form": form, "min_weight": min_weight}
    assert sorted(calls[0]["weights"].tolist()) == [0.0] * 4 + [1.0] * 4
