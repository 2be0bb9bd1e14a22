"""fit --budget: durations, the epoch plan, and what a person set by hand."""

from __future__ import annotations

from dataclasses import replace

import pytest

from engine.config import ConfigError, RunConfig, parse_budget
from engine.train.budget import StepCosts, estimate_seconds, fixed_seconds, plan

COSTS = StepCosts(simclr=0.004, classifier=0.0015, score=0.0004)  # seconds per image, a 2-core CPU's order


@pytest.mark.parametrize(("text", "seconds"), [("600", 600), ("600s", 600), ("10m", 600), ("10min", 600),
                                               ("1.5h", 5400), (" 90 ", 90)])
def test_durations(text: str, seconds: float) -> None:
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["ten minutes", "10 days", "-5m", "5s", "", "10x"])
def test_bad_durations_are_one_sentence(text: str) -> None:
    with pytest.raises(ConfigError, match="--budget must be"):
        parse_budget(text)


def test_the_plan_fills_the_budget_and_keeps_the_profiles_ratio() -> None:
    cfg = replace(RunConfig(), budget_s=600.0)
    planned = plan(cfg, 5000, COSTS)
    took = estimate_seconds(planned, 5000, COSTS)
    assert 0.85 * 600 <= took <= 600  # within the budget, and not far below it
    ratio = cfg.pretrain.epochs / cfg.classify.epochs
    assert abs(planned.pretrain.epochs / planned.classify.epochs - ratio) < 0.15
    assert planned.budget_s == 600.0 and planned.pretrain.epochs > cfg.pretrain.epochs  # 600 s is more than 12+12


def test_a_larger_dataset_gets_fewer_epochs_in_the_same_time() -> None:
    cfg = replace(RunConfig(), budget_s=600.0)
    small, large = plan(cfg, 2000, COSTS), plan(cfg, 20000, COSTS)
    assert small.classify.epochs > large.classify.epochs >= 1


def test_epochs_set_by_hand_stay_and_the_rest_takes_the_budget() -> None:
    cfg = replace(RunConfig(), budget_s=600.0, classify=replace(RunConfig().classify, epochs=5))
    planned = plan(cfg, 5000, COSTS, set_by_hand=frozenset({"classify.epochs"}))
    assert planned.classify.epochs == 5
    assert estimate_seconds(planned, 5000, COSTS) <= 600 < estimate_seconds(
        replace(planned, pretrain=replace(planned.pretrain, epochs=planned.pretrain.epochs + 2)), 5000, COSTS)


def test_without_pretraining_the_budget_goes_to_the_classifier() -> None:
    cfg = replace(RunConfig(), budget_s=300.0, pretrain=replace(RunConfig().pretrain, enabled=False))
    planned = plan(cfg, 5000, COSTS)
    assert planned.pretrain == cfg.pretrain
    assert 0.85 * 300 <= estimate_seconds(planned, 5000, COSTS) <= 300


def test_no_budget_changes_nothing_and_a_tiny_budget_still_trains() -> None:
    assert plan(RunConfig(), 5000, COSTS) == RunConfig()
    tiny = plan(replace(RunConfig(), budget_s=10.0), 5000, COSTS)
    assert (tiny.pretrain.epochs, tiny.classify.epochs) == (1, 1)
    assert fixed_seconds(RunConfig(), 5000, COSTS) > 10  # why it cannot be met: said by the estimate
