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


# ----------------------------------------------------------------------------- the ceiling (--time-limit)

SLOW = StepCosts(simclr=0.0167, classifier=0.006, score=0.0015)  # the 60 SimCLR images/s of an AVX2 2-core CPU


def test_the_auto_ceiling_follows_the_image_count() -> None:
    from engine.train.budget import auto_time_limit

    assert auto_time_limit(10) == auto_time_limit(1797) == auto_time_limit(2000) == 150.0  # the bundled sample
    assert auto_time_limit(3500) == pytest.approx(375.0)  # linear between 2,000 and 5,000 images
    assert auto_time_limit(5000) == auto_time_limit(200_000) == 600.0


@pytest.mark.parametrize(("text", "seconds"), [("auto", -1.0), ("AUTO", -1.0), ("none", 0.0), ("0", 0.0),
                                               ("3m", 180.0), ("1h", 3600.0)])
def test_time_limits(text: str, seconds: float) -> None:
    from engine.config import parse_time_limit

    assert parse_time_limit(text) == seconds


def test_a_bad_time_limit_is_one_sentence() -> None:
    from engine.config import parse_time_limit, validate

    with pytest.raises(ConfigError, match="--time-limit must be auto, none or a duration"):
        parse_time_limit("soon")
    with pytest.raises(ConfigError, match="time_limit_s must be"):
        validate(replace(RunConfig(), time_limit_s=5.0))


def test_the_ceiling_shrinks_the_epochs_to_fit_and_never_grows_them() -> None:
    from engine.train.budget import capped

    cfg = RunConfig()
    assert estimate_seconds(cfg, 1797, SLOW) > 500  # the profile's 12 + 12 epochs take minutes here
    shrunk = capped(cfg, 1797, SLOW, 150.0)
    assert estimate_seconds(shrunk, 1797, SLOW) <= 150.0
    assert 1 <= shrunk.pretrain.epochs < cfg.pretrain.epochs and 1 <= shrunk.classify.epochs < cfg.classify.epochs
    assert capped(cfg, 1797, COSTS, 10_000.0) == cfg  # a fast machine: the profile's epochs, not more
    assert capped(cfg, 1797, SLOW, 0.0) == cfg  # no ceiling


def test_epochs_set_by_hand_stay_under_the_ceiling() -> None:
    from engine.train.budget import capped

    shrunk = capped(RunConfig(), 1797, SLOW, 150.0, set_by_hand=frozenset({"classify.epochs"}))
    assert shrunk.classify.epochs == RunConfig().classify.epochs and shrunk.pretrain.epochs < RunConfig().pretrain.epochs


class _Notes:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def note(self, text: str) -> None:
        self.lines.append(text)


def _planned(argv: list[str], n: int, monkeypatch: pytest.MonkeyPatch, costs: StepCosts | None,
             run: object = None) -> tuple[RunConfig, list[str]]:
    from engine.cli import build_parser
    from engine.cli import run as cli_run
    from engine.train import budget

    def measure(*_args: object) -> StepCosts:
        if costs is None:
            raise AssertionError("the speed was measured although the epochs fit on any machine")
        return costs

    monkeypatch.setattr(budget, "measure", measure)
    args = build_parser().parse_args(["fit", "data", "--run-dir", "run", "--device", "cpu", *argv])
    notes = _Notes()
    cfg = cli_run._planned(cli_run.fit_config(args), args, n, 10, notes, run)  # type: ignore[arg-type]
    return cfg, notes.lines


def test_a_new_cpu_run_records_its_ceiling_and_says_when_it_shrinks_the_epochs(monkeypatch, tmp_path) -> None:
    from engine.runs.rundir import RunDir

    run = RunDir(tmp_path / "run")
    cfg, notes = _planned([], 1797, monkeypatch, SLOW, run)
    assert cfg.time_limit_s == 150.0 and estimate_seconds(cfg, 1797, SLOW) <= 150.0
    assert len(notes) == 1 and notes[0].startswith("time limit 150 s for 1,797 images:")
    assert "instead of 12 and 36" in notes[0] and "--time-limit none" in notes[0]  # the CPU profile's epochs
    assert [e["message"] for e in run.read_events() if e["kind"] == "plan"] == notes  # for the Train page


def test_a_small_run_is_not_measured_and_keeps_the_profile(monkeypatch) -> None:
    cfg, notes = _planned([], 60, monkeypatch, None)
    assert (cfg.pretrain.epochs, cfg.classify.epochs, cfg.time_limit_s, notes) == (12, 36, 150.0, [])


def test_no_ceiling_and_both_epochs_by_hand_keep_the_epochs(monkeypatch) -> None:
    cfg, _ = _planned(["--time-limit", "none"], 1797, monkeypatch, None)
    assert (cfg.pretrain.epochs, cfg.classify.epochs, cfg.time_limit_s) == (12, 36, 0.0)
    cfg, _ = _planned(["--epochs", "20", "--pretrain-epochs", "30"], 1797, monkeypatch, None)
    assert (cfg.pretrain.epochs, cfg.classify.epochs) == (30, 20)
    cfg, _ = _planned(["--time-limit", "5m"], 1797, monkeypatch, SLOW)
    assert cfg.time_limit_s == 300.0 and cfg.pretrain.epochs < 12 and estimate_seconds(cfg, 1797, SLOW) <= 300


def test_the_gpu_profile_has_no_ceiling() -> None:
    from engine.config import profile_for

    assert profile_for("cuda").time_limit_s == 0.0 and profile_for("cpu").time_limit_s == -1.0


def test_the_ceiling_cuts_pre_training_before_the_classifier() -> None:
    from engine.train.budget import capped

    tight = capped(RunConfig(), 1797, SLOW, 150.0)
    assert tight.pretrain.epochs == 1 and tight.classify.epochs >= 4  # the sample on a slow CPU
    roomy = capped(RunConfig(), 5000, StepCosts(simclr=1 / 120, classifier=1 / 110, score=1 / 1100), 600.0)
    assert roomy.classify.epochs == 6 and 1 < roomy.pretrain.epochs < 12  # half the classifier's, the rest to SimCLR
    assert estimate_seconds(roomy, 5000, StepCosts(simclr=1 / 120, classifier=1 / 110, score=1 / 1100)) <= 600.0


def test_larger_images_and_the_small_stem_are_measured_sooner() -> None:
    from engine.train.budget import fits_on_any_machine

    cfg = RunConfig()
    assert fits_on_any_machine(cfg, 60, 150.0)
    assert not fits_on_any_machine(replace(cfg, data=replace(cfg.data, image_size=96)), 60, 150.0)
    assert not fits_on_any_machine(replace(cfg, model=replace(cfg.model, stem="small")), 60, 150.0)


def test_a_small_overshoot_shortens_pre_training_alone() -> None:
    from engine.train.budget import capped

    # The small CNN on 5,000 CIFAR images on 2 cores (the CPU profile's 24 + 12 epochs, this machine's speed):
    # a few seconds over the limit costs pre-training epochs, never half the classifier's.
    costs = StepCosts(simclr=19 / 5000, classifier=8.5 / 5000, score=0.5 / 5000)
    cfg = replace(RunConfig(), pretrain=replace(RunConfig().pretrain, epochs=24))
    assert 600 < estimate_seconds(cfg, 5000, costs) < 650
    near = capped(cfg, 5000, costs, 600.0)
    assert near.classify.epochs == 12 and 12 <= near.pretrain.epochs < 24
    assert estimate_seconds(near, 5000, costs) <= 600.0
    # Where pre-training would lose more than half its epochs, the classifier gives way first, as before.
    far = capped(cfg, 2000, costs, 150.0)
    assert far.classify.epochs == 6 and 1 <= far.pretrain.epochs < 24
    assert estimate_seconds(far, 2000, costs) <= 150.0


# ----------------------------------------------------------------------------- filling the automatic ceiling
FAST = StepCosts(simclr=0.0007, classifier=0.0005, score=0.0001)  # a 2-core AVX-512 CPU, 32 px, the small CNN


def test_a_fast_machine_grows_the_pre_training_of_a_large_run_to_fill_the_ceiling(monkeypatch, tmp_path) -> None:
    from engine.runs.rundir import RunDir
    from engine.train.budget import FILL_SHARE, MAX_GROWTH

    run = RunDir(tmp_path / "run")
    cfg, notes = _planned([], 5000, monkeypatch, FAST, run)
    assert cfg.time_limit_s == 600.0 and estimate_seconds(cfg, 5000, FAST) <= FILL_SHARE * 600
    # The classifier keeps the profile's 36 epochs (the relabel bar is measured there); SimCLR takes the time
    # left, up to four times its 12 epochs.
    assert (cfg.pretrain.epochs, cfg.classify.epochs, cfg.split.covariance) == (MAX_GROWTH * 12, 36, "full")
    assert len(notes) == 1 and "48 pre-training and 36 classifier epochs instead of 12 and 36" in notes[0]
    assert [e["message"] for e in run.read_events() if e["kind"] == "plan"] == notes
    kept, _ = _planned(["--set", "split.covariance=tied"], 5000, monkeypatch, FAST)
    assert kept.split.covariance == "tied" and kept.pretrain.epochs == 48  # what a person set stays


def test_filling_grows_pre_training_only_up_to_four_times_and_never_shrinks_a_fitting_run() -> None:
    from engine.train.budget import FILL_SHARE, MAX_GROWTH, filled

    cfg = replace(RunConfig(), pretrain=replace(RunConfig().pretrain, epochs=24))
    tiny = StepCosts(simclr=1e-6, classifier=1e-6, score=1e-7)
    most = filled(cfg, 5000, tiny, 600.0)
    assert (most.pretrain.epochs, most.classify.epochs) == (MAX_GROWTH * 24, 12)
    some = filled(cfg, 2000, FAST, 150.0)  # room for a few more SimCLR epochs, not for four times as many
    assert 24 < some.pretrain.epochs < MAX_GROWTH * 24 and some.classify.epochs == 12
    assert 0.8 * FILL_SHARE * 150 <= estimate_seconds(some, 2000, FAST) <= FILL_SHARE * 150.0
    slow = StepCosts(simclr=19 / 5000, classifier=8.5 / 5000, score=0.5 / 5000)  # the profile overruns 600 s
    shrunk = filled(cfg, 5000, slow, 600.0)
    assert shrunk.pretrain.epochs < 24 and estimate_seconds(shrunk, 5000, slow) <= 600.0
    by_hand = filled(cfg, 5000, tiny, 600.0, set_by_hand=frozenset({"pretrain.epochs"}))
    assert (by_hand.pretrain.epochs, by_hand.classify.epochs) == (24, 12)  # nothing left to grow


def test_below_two_thousand_images_and_under_a_chosen_limit_the_profile_is_not_grown(monkeypatch) -> None:
    cfg, notes = _planned([], 1797, monkeypatch, FAST)  # the bundled sample: quick, as measured
    assert (cfg.pretrain.epochs, cfg.classify.epochs, cfg.split.covariance, notes) == (12, 36, "full", [])
    cfg, _ = _planned(["--time-limit", "10m"], 5000, monkeypatch, FAST)  # a ceiling a person chose stays a ceiling
    assert (cfg.pretrain.epochs, cfg.classify.epochs) == (12, 36)
    cfg, _ = _planned(["--epochs", "5"], 5000, monkeypatch, FAST)  # what a person set stays; the rest fills
    assert cfg.classify.epochs == 5 and cfg.pretrain.epochs > 12


def test_two_thousand_images_fill_their_150_seconds() -> None:
    from engine.train.budget import FILL_SHARE, filled, fills

    assert fills(True, 2000) and not fills(True, 1999) and not fills(False, 5000)
    cfg = replace(RunConfig(), pretrain=replace(RunConfig().pretrain, epochs=24))
    grown = filled(cfg, 2000, FAST, 150.0)
    assert grown.pretrain.epochs > 24 and estimate_seconds(grown, 2000, FAST) <= FILL_SHARE * 150.0


def test_a_steps_speed_is_the_median_of_single_timed_steps_after_the_untimed_ones(monkeypatch) -> None:
    from engine.train import budget
    from engine.train.device import make_runtime

    # Step i takes durations[i] seconds: the first-call costs (untimed) and one straggler must not count.
    durations = iter([5.0, 3.0, 0.1, 0.1, 0.9, 0.1, 0.1])
    clock = {"t": 0.0}
    monkeypatch.setattr(budget.time, "perf_counter", lambda: clock["t"])

    def step() -> None:
        clock["t"] += next(durations)

    per_image = budget._per_image(step, make_runtime("cpu", "fp32"), batch=10)
    assert per_image == pytest.approx(0.01)  # median 0.1 s over 10 images


def test_a_classifier_cut_below_the_long_training_splits_with_a_shared_variance(monkeypatch, tmp_path) -> None:
    from engine.runs.rundir import RunDir
    from engine.train.budget import LONG_TRAINED_EPOCHS, split_for_epochs

    long = replace(RunConfig(), classify=replace(RunConfig().classify, epochs=LONG_TRAINED_EPOCHS),
                   split=replace(RunConfig().split, covariance="full"))
    assert split_for_epochs(long).split.covariance == "full"
    short = replace(long, classify=replace(long.classify, epochs=LONG_TRAINED_EPOCHS - 1))
    assert split_for_epochs(short).split.covariance == "tied"
    assert split_for_epochs(replace(short, split=RunConfig().split)) == replace(short, split=RunConfig().split)
    # The sample on a slow CPU: the limit halves the classifier's 36 epochs, and the plan says so.
    run = RunDir(tmp_path / "run")
    cfg, notes = _planned([], 1797, monkeypatch, SLOW, run)
    assert cfg.classify.epochs < LONG_TRAINED_EPOCHS and cfg.split.covariance == "tied"
    assert "split.covariance=tied for the shorter training" in notes[0]
    cut, _ = _planned(["--epochs", "12"], 60, monkeypatch, None)  # epochs a person cut: the same rule
    assert (cut.classify.epochs, cut.split.covariance) == (12, "tied")
    kept, _ = _planned(["--epochs", "12", "--set", "split.covariance=full"], 60, monkeypatch, None)
    assert kept.split.covariance == "full"  # a mixture a person chose stays
    full, _ = _planned([], 60, monkeypatch, None)
    assert (full.classify.epochs, full.split.covariance) == (36, "full")  # the profile as it is
