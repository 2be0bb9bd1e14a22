"""Review page (AppTest): skip, the flag budget, show reviewed, per-class counts, why a card was flagged, its
nearest images, re-ranking, and the workspace memory."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
from fixtures_runs import open_page, write_fake_run
from test_app_review import card_indices, focused_line, progress_text

from engine.review.decisions import DecisionStore
from engine.review.memory import MEMORY_SOURCE, Memory
from engine.runs.atomic import atomic_write_json


def test_skip_with_s_records_unsure_and_shows_the_card_again_at_the_end(fake_run):
    at = open_page("review", run_id=fake_run.run_id)
    order = fake_run.flagged
    assert at.button(key="kb_skip").proto.shortcut == "s"
    at.button(key="kb_skip").click().run()  # S on the first card
    first = order.iloc[0]
    d = DecisionStore(fake_run.run.decisions).get(first["path"])
    assert (d.action, d.label) == ("skip", None)
    assert card_indices(at) == [*order["index"].iloc[1:], first["index"]]  # at the end of the queue
    assert focused_line(at).startswith(f"**Focused card 1 of 9:** `{Path(order.iloc[1]['path']).name}`")
    assert progress_text(at) == "0 / 9 flagged images reviewed"  # unsure is not reviewed
    assert any("skipped" in m.value and Path(first["path"]).name in m.value for m in at.markdown)
    second = order.iloc[1]
    at.button(key=f"skip_{second['index']}").click().run()  # the card's own Skip button
    assert card_indices(at)[-2:] == [first["index"], second["index"]]
    at.button(key="kb_undo").click().run()
    assert DecisionStore(fake_run.run.decisions).get(second["path"]) is None
    assert card_indices(at)[:1] == [second["index"]]  # back in its place, and focused
    assert focused_line(at).startswith(f"**Focused card 1 of 9:** `{Path(second['path']).name}`")


def test_the_budget_shows_the_n_most_suspicious_and_answered_ones_count_first(fake_run):
    store = DecisionStore(fake_run.run.decisions)
    order = fake_run.flagged
    store.decide([order.iloc[5]["path"]], "keep", order.iloc[5]["given_label"], source="other-tab")
    at = open_page("review", run_id=fake_run.run_id)
    at.number_input(key="review_top").set_value(3).run()
    # the kept image used one of the three: the two most suspicious of the others are left
    assert card_indices(at) == order["index"].iloc[:2].tolist()
    at.button(key="kb_keep").click().run()  # decided here: stays in view, and pulls nothing new in
    assert card_indices(at) == order["index"].iloc[:2].tolist()
    at.toggle(key="review_show_reviewed").set_value(True).run()
    assert sorted(card_indices(at)) == sorted(order["index"].iloc[[0, 1, 5]].tolist())
    at.number_input(key="review_top").set_value(0).run()  # 0: every flagged image
    assert len(card_indices(at)) == 9


def test_per_class_counts_of_flagged_reviewed_skipped_and_left(fake_run):
    store = DecisionStore(fake_run.run.decisions)
    flagged = fake_run.flagged
    cats = flagged[flagged["given_label"] == "cat"]["path"].tolist()
    store.decide(cats[:1], "discard")
    store.decide(cats[1:2], "skip")
    at = open_page("review", run_id=fake_run.run_id)
    counts = at.dataframe[0].value.set_index("class")
    assert counts.loc["cat"].tolist() == [3, 1, 1, 1]
    assert counts.loc["dog"].tolist() == [3, 0, 0, 3]
    assert list(counts.columns) == ["flagged", "reviewed", "skipped", "left"]
    at.number_input(key="review_top").set_value(4).run()
    assert "left in budget" in at.dataframe[0].value.columns
    assert at.dataframe[0].value["left in budget"].sum() == 2  # 4 minus the two cats answered


def test_each_card_says_why_it_was_flagged(fake_run):
    at = open_page("review", run_id=fake_run.run_id)
    samples, row = fake_run.samples, fake_run.flagged.iloc[0]
    same = samples[samples["given_label"] == row["given_label"]]["loss"]
    pct = int(float((same <= row["loss"]).mean() * 100))
    nearest = np.load(fake_run.run.neighbours)[int(row["index"])]
    label, count = Counter(samples["given_label"].iloc[nearest]).most_common(1)[0]
    expected = (f"Why: loss ≥ {pct} % of images labelled {row['given_label']} · clean prob {row['clean_prob']:.2f} · "
                f"{count} of 5 nearest images {'is' if count == 1 else 'are'} labelled {label}")
    captions = [c.value for c in at.caption]
    assert any(expected in c for c in captions), (expected, captions[:6])


def test_the_nearest_images_show_only_when_asked(fake_run):
    at = open_page("review", run_id=fake_run.run_id)
    assert len(at.image) == 9  # one thumbnail per card, none of the nearest images yet
    row = fake_run.flagged.iloc[0]
    at.session_state[f"nb_{row['index']}"] = True  # the popover opened
    at.run()
    assert len(at.image) == 10  # one more image list: the 5 nearest images ...
    nearest = np.load(fake_run.run.neighbours)[int(row["index"])]
    popover = next(i for i in at.image if len(i.value) == 5)
    assert popover.captions == fake_run.samples["given_label"].iloc[nearest].tolist()  # ... with their labels


def test_rerank_now_refreshes_the_suggestions_and_the_order(fake_run, fake_jobs):
    at = open_page("review", run_id=fake_run.run_id)
    assert any("Order and suggestions from the fit" in c.value for c in at.caption)
    at.button(key="rerank_now").click().run()
    assert fake_jobs.names() == ["start_rerank"]
    rerank = pd.read_csv(fake_run.run.rerank, dtype=str, keep_default_na=False)
    at.run()  # the page the finished re-ranking reruns
    assert any("re-ranked with 0 decisions" in c.value for c in at.caption)
    flagged = rerank[fake_run.samples["flagged"] == 1].assign(s=lambda f: f["suspicion"].astype(float))
    expected = flagged.sort_values(["s", "path"], ascending=[False, True])["index"].astype(int).tolist()
    assert card_indices(at) == expected
    first = rerank.set_index("path").loc[fake_run.samples["path"][expected[0]]]
    card_text = " ".join(m.value for m in at.markdown)
    assert f"suggested **{first['suggested_label']}**" in card_text
    at.button(key="kb_accept").click().run()  # accept takes the suggestion on screen: the re-ranked one
    d = DecisionStore(fake_run.run.decisions).get(fake_run.samples["path"][expected[0]])
    assert d.label == first["suggested_label"]


def test_a_rerank_starts_by_itself_after_every_n_decisions(app_workspace, fake_jobs):
    fake = write_fake_run(app_workspace / "runs")
    config = json.loads(fake.run.config.read_text())
    config["review"] = {"memory": True, "rerank_every": 2}
    atomic_write_json(fake.run.config, config)
    at = open_page("review", run_id=fake.run_id)
    at.button(key="kb_keep").click().run()
    assert "start_rerank" not in fake_jobs.names()
    at.button(key="kb_discard").click().run()  # the second decision
    assert fake_jobs.names() == ["start_rerank"]
    at.button(key="kb_skip").click().run()  # a skip changes nothing the head trains on
    at.button(key="kb_keep").click().run()
    assert fake_jobs.names() == ["start_rerank"]
    at.button(key="kb_keep").click().run()  # two trusted decisions since the last one
    assert fake_jobs.names() == ["start_rerank", "start_rerank"]


def test_decisions_go_to_the_workspace_memory_and_a_broken_memory_is_shown(fake_run):
    at = open_page("review", run_id=fake_run.run_id)
    at.button(key="kb_keep").click().run()
    first = fake_run.flagged.iloc[0]
    assert [(e.path, e.action) for e in Memory().entries()] == [(first["path"], "keep")]
    memory_file = Path(os.environ["CLEAN_WORKSPACE"]) / "memory.sqlite"
    memory_file.unlink()
    memory_file.write_bytes(b"someone else's file")
    at.button(key="kb_discard").click().run()
    second = fake_run.flagged.iloc[1]
    assert DecisionStore(fake_run.run.decisions).get(second["path"]).action == "discard"  # the run has it
    assert any("the workspace memory could not record it" in i.value for i in at.info)


def test_the_page_says_what_the_run_started_with_or_that_it_opted_out(app_workspace, fake_jobs):
    fake = write_fake_run(app_workspace / "runs")
    rows = fake.flagged.iloc[:2]
    DecisionStore(fake.run.decisions).decide(rows["path"].tolist(), "discard", source=MEMORY_SOURCE)
    at = open_page("review", run_id=fake.run_id)
    assert any("started with **2** decisions remembered from earlier runs" in c.value for c in at.caption)
    assert not set(rows["index"]) & set(card_indices(at))  # they count as reviewed
    config = json.loads(fake.run.config.read_text())
    config["review"] = {"memory": False, "rerank_every": 20}
    atomic_write_json(fake.run.config, config)
    at = open_page("review", run_id=fake.run_id)
    assert any("does not use the workspace's decision memory" in c.value for c in at.caption)
    at.button(key="kb_keep").click().run()
    assert Memory().entries() == []
