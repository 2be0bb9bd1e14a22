"""Phase (b)'s check against held-out decisions (engine.method.holdout)."""

from __future__ import annotations

import numpy as np
import pytest

from engine.config import SplitConfig
from engine.method.holdout import check_rows, judge, least_decisions
from engine.review.decisions import Decision
from engine.train.finetune import finetune_targets


def _onehot(pred: list[int], c: int = 3) -> np.ndarray:
    out = np.full((len(pred), c), 0.1, np.float32)
    out[np.arange(len(pred)), pred] = 0.8
    return out


def test_check_rows_hold_out_a_share_of_the_reviewed_images_the_same_way_each_time() -> None:
    decided = np.zeros(100, bool)
    decided[::4] = True  # 25 reviewed
    rows = check_rows(decided, 0.2, seed=7)
    assert rows.sum() == 5 and not (rows & ~decided).any()
    assert (check_rows(decided, 0.2, seed=7) == rows).all()
    assert (check_rows(decided, 0.2, seed=8) != rows).any()
    assert check_rows(decided, 0.0, seed=7).sum() == 0
    assert check_rows(np.zeros(10, bool), 0.5, seed=7).sum() == 0


def test_a_fine_tune_that_fixes_clearly_more_than_it_breaks_is_kept() -> None:
    labels = np.zeros(12, int)
    a = _onehot([1] * 9 + [0, 0, 0])  # (a) right on 3 of 12
    b = _onehot([0] * 8 + [1, 1, 0, 1])  # (b) right on 9: fixes 8, breaks 2 (images 9 and 11) ... and 10 shared
    check = np.ones(12, bool)
    c = judge(a, b, labels, check, p_max=0.1)
    assert (c.n, c.a_right, c.b_right, c.fixes, c.breaks) == (12, 3, 9, 8, 2)
    assert c.kept and c.p_value == pytest.approx(0.0547, abs=1e-4)  # P(X >= 8 | 10 coin flips)
    assert c.sentence().startswith("fine-tuning kept: on 12 reviewed images it did not train on")


def test_a_fine_tune_no_clearer_than_chance_or_worse_is_not_kept() -> None:
    labels = np.zeros(6, int)
    check = np.ones(6, bool)
    a = _onehot([0, 0, 1, 1, 1, 1])
    slightly = judge(a, _onehot([1, 0, 0, 0, 0, 1]), labels, check, p_max=0.1)  # fixes 3, breaks 1: p = 0.3125
    assert (slightly.fixes, slightly.breaks) == (3, 1) and not slightly.kept
    worse = judge(_onehot([0] * 6), _onehot([1, 1, 0, 0, 0, 0]), labels, check, p_max=0.1)
    assert worse.breaks == 2 and worse.fixes == 0 and not worse.kept
    assert "not kept" in worse.sentence() and "keeps phase (a)'s model" in worse.sentence()
    same = judge(a, a, labels, check, p_max=0.1)
    assert same.p_value is None and not same.kept
    # only the held-out rows count
    only_two = judge(a, _onehot([1, 0, 0, 0, 0, 1]), labels, np.array([1, 1, 0, 0, 0, 0], bool), p_max=1.0)
    assert (only_two.n, only_two.a_right, only_two.b_right) == (2, 2, 1) and not only_two.kept


def test_no_held_out_images_keeps_phase_a_unless_the_check_is_off() -> None:
    a, b, labels = _onehot([0, 1]), _onehot([1, 1]), np.array([1, 1])
    none = judge(a, b, labels, np.zeros(2, bool), p_max=0.1)
    assert none.n == 0 and not none.kept and "no reviewed image could be held out" in none.sentence()
    off = judge(a, b, labels, np.zeros(2, bool), p_max=0.1, enabled=False)
    assert off.kept and "unchecked" in off.sentence()


def test_finetune_targets_leave_the_held_out_images_out_of_training() -> None:
    rng = np.random.default_rng(0)
    n = 40
    probs = rng.dirichlet(np.ones(2), n).astype(np.float32)
    given = rng.integers(0, 2, n)
    paths = tuple(f"img{i}.png" for i in range(n))
    decisions = {f"img{i}.png": Decision(f"img{i}.png", "relabel", "dog", "2026-01-01T00:00:00Z") for i in range(20)}
    decisions["img30.png"] = Decision("img30.png", "discard", None, "2026-01-01T00:00:00Z")
    t = finetune_targets(probs, paths, ("cat", "dog"), decisions, SplitConfig(), given=given, min_weight=0.01, seed=0,
                         check_share=0.25, check_seed=3)
    assert t.n_check == 5 and t.check[:20].sum() == 5 and not t.check[20:].any()
    assert not (t.keep & t.check).any() and not t.keep[30] and t.keep[~t.check & (np.arange(n) != 30)].all()
    assert (t.labels[t.check] == 1).all()  # scored against the decided label
    plain = finetune_targets(probs, paths, ("cat", "dog"), decisions, SplitConfig(), given=given, min_weight=0.01,
                             seed=0)
    assert plain.n_check == 0 and plain.keep.sum() == n - 1


def test_least_decisions_is_the_first_count_whose_check_can_pass() -> None:
    assert least_decisions(0.2, 0.1) == 20  # 4 held out, all fixed: p = 1/16
    assert least_decisions(0.25, 0.05) == 20  # 5 held out: p = 1/32
    assert least_decisions(0.0, 0.1) == 0
    labels, a, b = np.zeros(20, int), _onehot([1] * 20), _onehot([0] * 20)
    for count, passes in ((19, False), (20, True)):
        check = check_rows(np.arange(20) < count, 0.2, seed=0)
        assert judge(a, b, labels, check, p_max=0.1).kept is passes
