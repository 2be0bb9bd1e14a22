"""Export page (AppTest): status counts, preview, and downloads carrying the corrected labels."""

from __future__ import annotations

import io
import json
import zipfile

import pandas as pd
import pytest
from fixtures_runs import open_page
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage

from engine.review.decisions import DecisionStore
from engine.runs.rundir import RunDir
from ui import exporting


@pytest.fixture
def downloads(monkeypatch: pytest.MonkeyPatch) -> dict[str, bytes]:
    """Every file AppTest's media storage receives, by URL, so a test can read what a download serves."""
    files: dict[str, bytes] = {}

    class RecordingStorage(MemoryMediaFileStorage):
        def load_and_get_id(self, path_or_data, mimetype, kind, filename=None):  # noqa: ANN001, ANN201
            file_id = super().load_and_get_id(path_or_data, mimetype, kind, filename)
            files[self.get_url(file_id)] = self.get_file(file_id).content
            return file_id

    monkeypatch.setattr("streamlit.testing.v1.app_test.MemoryMediaFileStorage", RecordingStorage)
    return files


def download(at, key: str, files: dict[str, bytes]) -> bytes:
    button = at.get("download_button")
    proto = next(b.proto for b in button if b.proto.id.endswith(key) or key in b.proto.id)
    return files[proto.url]


def test_downloads_carry_the_human_decisions(fake_run, downloads):
    rows = fake_run.flagged
    store = DecisionStore(fake_run.run.decisions)
    store.decide([rows["path"].iloc[0]], "keep", rows["given_label"].iloc[0], source="t")
    store.decide([rows["path"].iloc[1]], "relabel", "fox", source="t")
    store.decide([rows["path"].iloc[2]], "discard", source="t")
    at = open_page("export", run_id=fake_run.run_id)
    assert not at.exception
    counts = {m.label: m.value for m in at.metric}
    assert counts == {"kept": "1", "relabeled": "1", "discarded": "1", "auto-relabeled": "6", "needs-review": "0",
                      "unchanged": "21", "duplicate-dropped": "0", "outlier-dropped": "0"}
    assert [b.proto.label for b in at.get("download_button")] == ["labels.csv", "labels.json",
                                                                    "Re-sorted folder (.zip)"]
    csv = pd.read_csv(io.BytesIO(download(at, "download_csv", downloads)), keep_default_na=False).set_index("path")
    assert len(csv) == 30
    assert csv.loc[rows["path"].iloc[0], ["label", "status"]].tolist() == [rows["given_label"].iloc[0], "kept"]
    assert csv.loc[rows["path"].iloc[1], ["label", "status"]].tolist() == ["fox", "relabeled"]
    assert csv.loc[rows["path"].iloc[2], ["label", "status"]].tolist() == ["", "discarded"]
    records = json.loads(download(at, "download_json", downloads))
    assert {r["path"]: r["status"] for r in records}[rows["path"].iloc[1]] == "relabeled"
    preview = at.dataframe[0].value
    assert set(preview["status"]) == {"kept", "relabeled", "discarded", "auto-relabeled"}


def test_a_new_decision_changes_the_download(fake_run, downloads):
    at = open_page("export", run_id=fake_run.run_id)
    first = pd.read_csv(io.BytesIO(download(at, "download_csv", downloads)))
    path = fake_run.flagged["path"].iloc[0]
    DecisionStore(fake_run.run.decisions).decide([path], "discard", source="t")
    at = open_page("export", run_id=fake_run.run_id)
    second = pd.read_csv(io.BytesIO(download(at, "download_csv", downloads)), keep_default_na=False)
    assert first.set_index("path").loc[path, "status"] == "auto-relabeled"
    assert second.set_index("path").loc[path, "status"] == "discarded"


def test_folder_zip_holds_the_resorted_images(fake_run, app_workspace):
    DecisionStore(fake_run.run.decisions).decide([fake_run.flagged["path"].iloc[0]], "discard", source="t")
    path = exporting.folder_zip(RunDir(fake_run.run.path))
    names = zipfile.ZipFile(path).namelist()
    images = [n for n in names if n.endswith(".png")]
    assert len(images) == 29  # one discarded
    assert all(n.split("/")[1] in ("cat", "dog", "fox") for n in images)
    assert f"{fake_run.run_id}_corrected/labels.csv" in names
    assert list((app_workspace / "exports" / fake_run.run_id).iterdir()) == [path]  # temporary files are gone
    assert exporting.folder_zip_data(RunDir(fake_run.run.path)) == path.read_bytes()


def test_folder_zip_is_a_file_in_the_workspace_reused_until_the_run_changes(fake_run, app_workspace):
    run = RunDir(fake_run.run.path)
    first = exporting.folder_zip(run)
    assert first.parent == app_workspace / "exports" / fake_run.run_id and first.suffix == ".zip"
    built_at = first.stat().st_mtime_ns
    DecisionStore(run.decisions).all()  # opening the store (as every page does) is not a change
    assert exporting.folder_zip(run) == first and first.stat().st_mtime_ns == built_at  # not rebuilt
    DecisionStore(run.decisions).decide([fake_run.flagged["path"].iloc[0]], "relabel", "fox", source="t")
    second = exporting.folder_zip(run)
    assert second != first and not first.exists()  # a new decision: a new archive, the stale one removed
    labels = pd.read_csv(zipfile.ZipFile(second).open(f"{fake_run.run_id}_corrected/labels.csv"))
    assert labels.set_index("path").loc[fake_run.flagged["path"].iloc[0], "label"] == "fox"


def test_statuses_are_explained_and_a_flagged_image_suggested_its_own_label_needs_review(fake_run):
    frame = fake_run.samples.copy()
    row = frame.index[frame["flagged"] == 1][0]
    frame.loc[row, "suggested_label"] = frame.loc[row, "given_label"]  # flagged, but the model agrees
    frame.to_csv(fake_run.run.samples, index=False)
    at = open_page("export", run_id=fake_run.run_id)
    assert not at.exception
    counts = {m.label: m.value for m in at.metric}
    assert (counts["auto-relabeled"], counts["needs-review"], counts["unchanged"]) == ("8", "1", "21")
    help_text = "flagged, not reviewed: the given label is kept until you decide"
    assert next(m for m in at.metric if m.label == "needs-review").help == help_text
    assert any(f"**needs-review**: {help_text}" in c.value for c in at.caption)


def test_the_automatic_changes_rule_decides_the_download_and_is_said_before_it(fake_run, downloads):
    at = open_page("export", run_id=fake_run.run_id)
    # the fake: 9 flagged, 3 truly mislabeled (the suggestion is right for those 3, wrong for the other 6)
    assert at.info[0].value == ("Labels right: given 90.0% → exported 80.0% (against the truth file); "
                                "9 labels change, 9 of them automatically.")
    at.radio(key="export_policy").set_value("never").run()
    counts = {m.label: m.value for m in at.metric}
    assert (counts["auto-relabeled"], counts["needs-review"]) == ("0", "9")
    assert at.info[0].value.startswith("Labels right: given 90.0% → exported 90.0%")
    csv = pd.read_csv(io.BytesIO(download(at, "download_csv", downloads)), keep_default_na=False)
    assert (csv["label"] == csv["original_label"]).all() and set(csv["status"]) == {"needs-review", "unchanged"}
    assert any("--auto-relabel never" in c.value for c in at.caption)
