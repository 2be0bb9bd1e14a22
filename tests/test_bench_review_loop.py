"""bench/review_loop.py's simulated reviewer, queue and scoring on a fake finished run (no training)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from fixtures_runs import write_fake_run

from bench import review_loop as rl
from engine.review.decisions import DecisionStore


@pytest.fixture
def fake(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CLEAN_WORKSPACE", str(tmp_path / "ws"))
    f = write_fake_run(tmp_path / "runs")
    truth = dict(zip(f.samples["path"], f.samples["true_label"], strict=True))
    given = dict(zip(f.samples["path"], f.samples["given_label"], strict=True))
    return f, truth, given


def test_the_reviewer_keeps_right_labels_and_relabels_wrong_ones_to_the_truth(fake, tmp_path: Path):
    f, truth, given = fake
    run = rl.copy_run(f.run.path, tmp_path / "copy")
    queue = rl.queue_paths(run, reranked=False)
    assert queue[:9] == list(f.flagged["path"])  # the most suspicious first, as the Review page shows them
    wrong = rl.answer(run, queue[:9], truth, given)
    decided = DecisionStore(run / "decisions.sqlite").all()
    assert wrong == sum(truth[p] != given[p] for p in queue[:9]) and wrong > 0
    for p in queue[:9]:
        d = decided[p]
        assert (d.action, d.label) == (("keep", given[p]) if truth[p] == given[p] else ("relabel", truth[p]))
    assert rl.queue_paths(run, reranked=False)[:3] == queue[9:12]  # answered images leave the queue
    assert not (f.run.path / "decisions.sqlite").exists()  # the source run is never written
    assert not (tmp_path / "ws" / "memory.sqlite").exists()  # simulated decisions are never remembered
    again = rl.copy_run(run, tmp_path / "again", keep_decisions=True)
    assert DecisionStore(again / "decisions.sqlite").all() == decided  # a second round builds on the first
    assert not (rl.copy_run(run, tmp_path / "fresh") / "decisions.sqlite").exists()


def test_found_per_100_and_accuracy_count_the_right_images(fake):
    _, truth, given = fake
    paths = list(truth)
    wrong = [p for p in paths if truth[p] != given[p]]
    assert rl.found_per_100(wrong[:2] + [p for p in paths if p not in wrong][:2], truth, given) == 50.0
    export = pd.DataFrame({"path": paths, "label": [truth[p] if p in wrong[:1] else given[p] for p in paths]})
    acc = rl.accuracy(export, truth, given, reviewed=set(wrong[:1]))
    n = len(paths)
    assert acc["all"] == round(100 * (n - len(wrong) + 1) / n, 2)
    assert acc["unreviewed"] == acc["given_unreviewed"] == round(100 * (n - len(wrong)) / (n - 1), 2)
    assert acc["changed"] == 1 and acc["n_unreviewed"] == n - 1


def test_the_report_states_each_goal_and_whether_it_is_met():
    row = {"k_share": 0.1, "k": 3, "found_clean": 80.0, "found_cleanlab": 60.0, "round2_found_phase_a_order": 50.0,
           "round2_found_reranked": 70.0, "rerank_seconds": 0.5,
           "review_only": {"all": 90.0, "unreviewed": 88.0, "given_unreviewed": 88.0, "unreviewed_all_taken": 80.0},
           "review_finetune": {"all": 89.0, "unreviewed": 87.0, "given_unreviewed": 88.0, "unreviewed_all_taken": 85.0},
           "finetune1_seconds": 10.0}
    r = rl.CaseResult("c", "a case", 30, 6, "fit ...", None, 1.0, 80.0, rows=[row])
    text = rl.markdown(r)
    assert "found per 100 80.0 vs cleanlab 60.0 (+20.0; goal ≥ +10): met" in text
    assert "by -1.0 points over review alone in the default export (+5.0 with every suggestion taken)" in text
    assert "LOWER: not met" in text
