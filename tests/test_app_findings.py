"""Copies and outliers in the app (AppTest): Review's side-by-side copies and "maybe discard" view,
Inspect's counts, Export's leave-out choices, the Train form's weights field."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from fixtures_runs import open_page

from ui import train_form
from ui.review_actions import SCOPE_KEY


@pytest.fixture
def evidence_run(fake_run):
    """The fake run whose two most suspicious flagged images are copies under different labels, and whose
    images 0 and 1 (not flagged) are the outliers."""
    fake = fake_run
    s = pd.read_csv(fake.run.samples, keep_default_na=False)
    first, second = fake.flagged["index"].tolist()[:2]
    s["duplicate_group"] = -1
    s.loc[[first, second], "duplicate_group"] = 0
    s["duplicate_conflict"] = 0
    s.loc[[first, second], "duplicate_conflict"] = int(s.loc[first, "given_label"] != s.loc[second, "given_label"])
    s["outlier_score"] = 0.5
    s.loc[[0, 1], "outlier_score"] = [0.995, 1.0]
    s.to_csv(fake.run.samples, index=False)
    return fake, s, (first, second)


def test_review_shows_a_conflicting_images_copies_with_their_labels(evidence_run) -> None:
    fake, s, (first, second) = evidence_run
    assert s.loc[first, "duplicate_conflict"] == 1  # the fake run's top two carry different labels
    at = open_page("review", run_id=fake.run_id)
    assert not at.exception
    captions = [c.value for c in at.caption]
    assert sum(c == "Copies of this image (1), with their labels:" for c in captions) == 2
    assert any("a copy of it carries another label" in c for c in captions)
    shown = [c.value for c in at.caption if c.value.startswith("Copies of this image")]
    assert shown and s.loc[second, "given_label"] != s.loc[first, "given_label"]


def test_review_maybe_discard_view_lists_outliers_most_outlying_first(evidence_run) -> None:
    fake, s, _ = evidence_run
    at = open_page("review", run_id=fake.run_id)
    radio = at.radio(key=SCOPE_KEY)
    assert "outliers" in radio.options or any("Maybe discard" in o for o in radio.options)
    radio.set_value("outliers").run()
    keys = {b.key: b for b in at.container if b.key and b.key.startswith("card_")}
    shown = [int(keys[f"card_{i}"].checkbox[0].key.removeprefix("sel_")) for i in range(len(keys))]
    assert shown == [1, 0]


def test_inspect_counts_each_kind_of_finding(evidence_run) -> None:
    fake, _, _ = evidence_run
    at = open_page("inspect", run_id=fake.run_id)
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Copies with different labels"] == "1" and metrics["Groups of copies"] == "1"
    assert metrics["Outliers (score ≥ 0.99)"] == "2"


def test_an_old_run_without_the_columns_shows_no_findings(fake_run) -> None:
    fake = fake_run
    at = open_page("inspect", run_id=fake.run_id)
    assert not at.exception
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Groups of copies"] == "0" and metrics["Outliers (score ≥ 0.99)"] == "0"
    review = open_page("review", run_id=fake.run_id)
    assert not review.exception and "outliers" not in review.radio(key=SCOPE_KEY).options


def test_export_leaves_out_outliers_and_copies_when_asked(evidence_run) -> None:
    fake, _, _ = evidence_run
    at = open_page("export", run_id=fake.run_id)
    assert not at.exception
    at.checkbox(key="export_drop_outliers").check().run()
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["outlier-dropped"] == "2"
    assert any("--drop-outliers 0.99" in c.value for c in at.caption)
    at.checkbox(key="export_drop_duplicates").check().run()
    assert {m.label: m.value for m in at.metric}["duplicate-dropped"] == "0"  # the only group's labels disagree


def test_the_train_form_sends_encoder_weights_as_a_setting(tmp_path: Path) -> None:
    assert "model.weights" in [s.key for s in train_form.SETTINGS] and train_form.kind_of("model.weights") is str
    file = tmp_path / "r18.pth"
    file.write_bytes(b"x")
    assert train_form.check_weights("") == ("", None)
    assert train_form.check_weights(str(file)) == (str(file.resolve()), None)
    assert train_form.check_weights(str(tmp_path / "none.pt"))[1] == f"weights file {tmp_path / 'none.pt'} does not exist on this server"
    flags = train_form.fit_flags({"model.weights": str(file)})
    assert flags == ["--set", f"model.weights={file}"]
