"""The review order and the flag budget (engine.review.queue), and `export --top N`, which uses them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from engine.cli import main
from engine.errors import UserError
from engine.review import queue
from engine.review.decisions import Decision, DecisionStore
from engine.review.export import corrected_labels
from engine.runs.atomic import atomic_write_json
from engine.runs.rundir import RunDir


def table(actions: dict[str, str] | None = None) -> pd.DataFrame:
    """Six images a..f, suspicion falling from a to f, all flagged but f; `actions` by path."""
    actions = actions or {}
    paths = ["c", "a", "e", "b", "d", "f"]  # not in order: the order is the queue's to make
    suspicion = {"a": 0.9, "b": 0.8, "c": 0.7, "d": 0.6, "e": 0.6, "f": 0.1}
    return pd.DataFrame({"path": paths, "suspicion": [suspicion[p] for p in paths],
                         "flagged": [int(p != "f") for p in paths],
                         queue.ACTION: [actions.get(p, "") for p in paths]})


def test_the_order_is_undecided_by_suspicion_then_skipped_and_reviewed_only_when_asked():
    t = table({"a": "skip", "b": "keep", "c": "discard"})
    assert queue.ordered(t)["path"].tolist() == ["d", "e", "f", "a"]  # ties by path; skipped at the end
    assert queue.ordered(t, include_reviewed=True)["path"].tolist() == ["d", "e", "f", "a", "b", "c"]
    # cards decided in this tab stay in place and in view
    assert queue.ordered(t, as_undecided=["b"])["path"].tolist() == ["b", "d", "e", "f", "a"]


def test_the_budget_counts_answered_images_first_then_the_most_suspicious():
    t = table()
    assert set(t["path"][queue.in_budget(t, 2)]) == {"a", "b"}
    assert set(t["path"][queue.in_budget(t, None)]) == {"a", "b", "c", "d", "e"}  # every flagged image
    answered = table({"d": "relabel", "e": "skip"})  # answered outside the top: they used the budget
    assert set(answered["path"][queue.in_budget(answered, 3)]) == {"d", "e", "a"}
    assert set(answered["path"][queue.in_budget(answered, 1)]) == {"d", "e"}  # over budget: nothing more
    assert not queue.in_budget(table({"f": "keep"}), 1)[table()["path"].tolist().index("f")]  # f is not flagged
    with pytest.raises(UserError, match="--top must be at least 1, got 0"):
        queue.in_budget(t, 0)


def test_decisions_since_a_rerank_count_changes_undos_and_new_ones_not_skips():
    rerank = pd.DataFrame({"path": ["a", "b", "c"], "decision_action": ["keep", "relabel", ""],
                           "decision_label": ["x", "y", ""]})
    now = {"a": Decision("a", "keep", "x", "t"), "b": Decision("b", "relabel", "z", "t"),
           "c": Decision("c", "skip", None, "t"), "d": Decision("d", "discard", None, "t")}
    assert queue.decisions_since(rerank, now) == 2  # b changed, d is new; a as before, c a skip
    assert queue.decisions_since(rerank, {"a": now["a"]}) == 1  # b was undone
    assert queue.decisions_since(None, now) == 3  # no re-ranking yet: every trusted decision


def write_run(folder: Path) -> RunDir:
    run = RunDir(folder)
    run.path.mkdir(parents=True)
    samples = pd.DataFrame({
        "index": range(5), "path": [f"x/{i}.png" for i in range(5)], "given_label": ["cat"] * 5,
        "suggested_label": ["dog"] * 5, "clean_prob": [0.1, 0.2, 0.3, 0.4, 0.9], "flagged": [1, 1, 1, 1, 0],
        "suspicion": [0.9, 0.8, 0.7, 0.6, 0.1]})
    samples.to_csv(run.samples, index=False)
    atomic_write_json(run.source, {"classes": ["cat", "dog"], "root": str(folder), "data": str(folder)})
    return run


def write_rerank(run: RunDir, suspicion: list[float], digest: str | None = None) -> None:
    samples = pd.read_csv(run.samples)
    pd.DataFrame({"index": samples["index"], "path": samples["path"], "suggested_label": ["cat"] * 5,
                  "suggested_prob": [0.6] * 5, "given_prob": [0.6] * 5, "suspicion": suspicion,
                  "decision_action": [""] * 5, "decision_label": [""] * 5}).to_csv(run.rerank, index=False)
    atomic_write_json(run.rerank_meta, {"samples_sha256": digest or queue.samples_digest(run.samples.read_bytes())})


def test_a_rerank_counts_only_for_the_samples_it_was_made_from(tmp_path: Path):
    run = write_run(tmp_path / "run")
    paths = pd.read_csv(run.samples)["path"]
    assert queue.current_rerank(run.path, queue.samples_digest(run.samples.read_bytes()), paths) is None
    write_rerank(run, [0.1, 0.2, 0.3, 0.95, 0.0])
    digest = queue.samples_digest(run.samples.read_bytes())
    rerank = queue.current_rerank(run.path, digest, paths)
    assert rerank is not None and rerank["suspicion"].tolist() == [0.1, 0.2, 0.3, 0.95, 0.0]
    merged = queue.with_rerank(pd.read_csv(run.samples), rerank)
    assert merged["suggested_label"].tolist() == ["cat"] * 5 and merged["clean_prob"].tolist()[0] == 0.1
    assert queue.current_rerank(run.path, "another fit", paths) is None  # samples.csv was replaced since
    assert queue.current_rerank(run.path, digest, paths[::-1].reset_index(drop=True)) is None  # rows differ


def test_export_top_keeps_only_the_budget_flagged_and_follows_a_current_rerank(tmp_path: Path):
    run = write_run(tmp_path / "run")
    DecisionStore(run.decisions).decide(["x/3.png"], "skip")  # looked at: inside the budget, still to answer
    out = corrected_labels(run.path, top=2, auto_relabel="all")  # every budget-flagged image takes its suggestion
    assert out["flagged"].tolist() == [1, 0, 0, 1, 0]
    assert out["status"].tolist() == ["auto-relabeled", "unchanged", "unchanged", "auto-relabeled", "unchanged"]
    assert corrected_labels(run.path)["flagged"].tolist() == [1, 1, 1, 1, 0]  # no budget: as before
    write_rerank(run, [0.1, 0.2, 0.95, 0.5, 0.0])  # the re-ranked order: image 2 first
    assert corrected_labels(run.path, top=2)["flagged"].tolist() == [0, 0, 1, 1, 0]


def test_cli_export_top(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    run = write_run(tmp_path / "run")
    out = tmp_path / "labels.csv"
    assert main(["export", str(run.path), "--out", str(out), "--top", "1", "--auto-relabel", "all"]) == 0
    labels = pd.read_csv(out, keep_default_na=False)
    assert labels["flagged"].tolist() == [1, 0, 0, 0, 0] and labels["label"].tolist() == ["dog"] + ["cat"] * 4
    assert main(["export", str(run.path), "--out", str(tmp_path / "other.csv"), "--top", "0"]) == 2
    assert capsys.readouterr().err.strip() == "error: --top must be at least 1, got 0"
    assert not (tmp_path / "other.csv").exists()
    assert np.array_equal(pd.read_csv(out)["flagged"], [1, 0, 0, 0, 0])
