"""The app's pure functions: figure builders, review queue and actions, fit flags, safe upload names, stages."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures_runs import CLASSES, fake_samples, write_fake_run, write_image_classes

from engine.config import RunConfig, profile_for
from engine.review.decisions import DecisionStore
from ui import charts, class_keys, datasets, progress, review, runs_table, train_form, workspace
from ui.cursor import ReviewCursor


@pytest.fixture
def samples() -> pd.DataFrame:
    frame = fake_samples(CLASSES, per_class=10)
    frame["flagged"] = frame["flagged"].astype(bool)
    return frame


# ----------------------------------------------------------------------------- charts


def test_mixture_curves_are_scaled_to_the_histogram():
    split = {"means": [0.2, 0.7], "stds": [0.05, 0.1], "weights": [0.75, 0.25]}
    x = np.linspace(-1, 2, 30001)
    clean, noisy = charts.mixture_curves(split, x, n=1000, bin_width=0.02)
    step = x[1] - x[0]
    # area under each curve / bin width = the images that component holds
    assert clean.sum() * step / 0.02 == pytest.approx(750, rel=1e-3)
    assert noisy.sum() * step / 0.02 == pytest.approx(250, rel=1e-3)
    assert x[np.argmax(clean)] == pytest.approx(0.2, abs=1e-3)


def test_loss_histogram_without_a_threshold_has_no_line():
    fig = charts.loss_histogram_figure(np.array([0.1, 0.2, 0.9]), {"means": [0.1, 0.9], "stds": [0.1, 0.1],
                                                                   "weights": [0.5, 0.5], "loss_threshold": None})
    assert len(fig.data) == 3 and not fig.layout.shapes
    assert sum(fig.data[0].y) == 3


def test_umap_traces_map_selected_points_back_to_rows(samples):
    coords = np.arange(len(samples) * 2, dtype=np.float32).reshape(-1, 2)
    umap = charts.umap_figure(samples, coords, "suggested", list(CLASSES))
    assert [t.name for t in umap.figure.data] == list(CLASSES)
    assert all(t.type == "scattergl" for t in umap.figure.data)
    for k, trace in enumerate(umap.figure.data):
        rows = umap.trace_rows[k]
        assert (samples["suggested_label"].iloc[rows] == trace.name).all()
        assert np.array_equal(np.asarray(trace.x), coords[rows, 0])
    picked = umap.rows_of([{"curve_number": 1, "point_index": 0}, {"curve_number": 2, "point_index": 1},
                           {"curve_number": 1, "point_index": 0}, {"curve_number": 9, "point_index": 0}])
    assert picked.tolist() == sorted({int(umap.trace_rows[1][0]), int(umap.trace_rows[2][1])})


def test_umap_scales_to_50k_points_without_per_point_loops():
    n = 50_000
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"path": [f"c/{i}.png" for i in range(n)], "given_label": rng.choice(list("abcdefghij"), n),
                          "suggested_label": rng.choice(list("abcdefghij"), n), "clean_prob": rng.random(n)})
    umap = charts.umap_figure(frame, rng.normal(size=(n, 2)).astype(np.float32), "given")
    assert sum(len(t.x) for t in umap.figure.data) == n
    assert umap.figure.data[0].marker.size == 3


def test_a_large_map_draws_a_fixed_sample_and_maps_its_points_back_to_rows():
    n = 1_000
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"path": [f"c/{i}.png" for i in range(n)], "given_label": rng.choice(list("abc"), n),
                          "suggested_label": rng.choice(list("abc"), n), "clean_prob": rng.random(n)})
    coords = np.c_[np.arange(n), np.zeros(n)].astype(np.float32)
    umap = charts.umap_figure(frame, coords, "given", max_points=100)
    again = charts.umap_figure(frame, coords, "clean", max_points=100)
    drawn = np.concatenate(umap.trace_rows)
    assert len(drawn) == 100 and len(set(drawn)) == 100
    assert sorted(drawn) == sorted(again.trace_rows[0])  # the same sample whatever the colouring
    for k, trace in enumerate(umap.figure.data):
        assert np.array_equal(np.asarray(trace.x), umap.trace_rows[k])  # x = the row number here
        assert (frame["given_label"].iloc[umap.trace_rows[k]] == trace.name).all()
        assert trace.hovertext[0] == (f"<b>{umap.trace_rows[k][0]}.png</b><br>given: {trace.name}<br>suggested: "
                                      f"{frame['suggested_label'].iloc[umap.trace_rows[k][0]]}")
    point = {"curve_number": 0, "point_index": 3}
    assert umap.rows_of([point]).tolist() == [int(umap.trace_rows[0][3])]


def test_confusion_counts_and_largest_disagreement(samples):
    table = charts.confusion_counts(samples, list(CLASSES))
    assert table.loc["cat", "dog"] == 3 and table.loc["cat", "cat"] == 7
    assert table.to_numpy().sum() == len(samples)
    assert charts.largest_disagreement(table) == ("cat", "dog")


def test_clean_noisy_counts(samples):
    table = charts.clean_noisy_counts(samples, list(CLASSES))
    assert table.to_dict(orient="index") == {c: {"clean": 7, "flagged": 3} for c in CLASSES}


def test_epoch_events_number_epochs_across_stages():
    events = [{"kind": "stage", "stage": "pretrain", "state": "start"},
              {"kind": "epoch", "stage": "pretrain", "epoch": 1, "loss": 3.0},
              {"kind": "epoch", "stage": "train", "epoch": 1, "loss": 1.0},
              {"kind": "epoch", "stage": "train", "epoch": 2, "loss": 0.5}]
    frame = charts.epoch_events(events)
    assert frame["step"].tolist() == [1, 2, 3]
    fig = charts.loss_curves_figure(events)
    assert [t.name for t in fig.data] == ["pretrain", "train"]


# ----------------------------------------------------------------------------- review queue and actions


def test_queue_order_and_filters(samples):
    decisions = pd.DataFrame([(samples["path"][9], "keep", "cat", "t")], columns=["path", "action", "label",
                                                                                  "decided_at"])
    table = review.with_decisions(samples, decisions)
    queue = review.review_queue(table)
    assert queue["suspicion"].is_monotonic_decreasing and len(queue) == 8  # the kept image is out of the queue
    assert len(review.review_queue(table, include_reviewed=True)) == 9
    assert review.progress_counts(table) == (1, 9)
    assert len(review.review_queue(table, statuses=["kept"])) == 1
    assert len(review.review_queue(table, statuses=[review.NOT_REVIEWED])) == 8
    assert set(review.review_queue(table, given=["dog"], suggested=["fox"])["path"]) == {
        p for p in samples.query("flagged and given_label == 'dog'")["path"]}
    chosen = samples["path"][:2].tolist()
    assert set(review.review_queue(table, scope="selection", selection=chosen)["path"]) == set(chosen)
    assert len(review.review_queue(table, scope="all")) == 29
    assert len(review.review_queue(table, scope="all", include_reviewed=True)) == 30


def test_skipped_images_come_last_and_pinned_cards_keep_their_place(samples):
    flagged = samples[samples["flagged"]].sort_values("suspicion", ascending=False)["path"].tolist()
    decisions = pd.DataFrame([(flagged[0], "skip", None, "t"), (flagged[1], "discard", None, "t")],
                             columns=["path", "action", "label", "decided_at"])
    table = review.with_decisions(samples, decisions)
    assert table.set_index("path").loc[flagged[0], "status"] == review.SKIPPED
    assert review.review_queue(table)["path"].tolist() == [*flagged[2:], flagged[0]]
    assert review.progress_counts(table) == (1, 9)  # a skip is no decision
    # decided in this tab: stays where it was shown, even though its suspicion changed since (a re-ranking)
    table.loc[table["path"] == flagged[1], "suspicion"] = 0.0
    pinned = review.review_queue(table, pinned={flagged[1]: 10.0})["path"].tolist()
    assert pinned == [flagged[1], *flagged[2:], flagged[0]]
    assert review.review_queue(table, statuses=["discarded"])["path"].tolist() == [flagged[1]]  # asked for
    assert review.review_queue(table, top=3)["path"].tolist() == [flagged[2], flagged[0]]  # 2 answered + 1


def test_per_class_counts(samples):
    flagged = samples[samples["flagged"]]
    cat = flagged[flagged["given_label"] == "cat"]["path"].tolist()
    decisions = pd.DataFrame([(cat[0], "keep", "cat", "t"), (cat[1], "skip", None, "t")],
                             columns=["path", "action", "label", "decided_at"])
    table = review.with_decisions(samples, decisions)
    counts = review.class_counts(table).set_index("class")
    assert counts.to_dict("index") == {"cat": {"flagged": 3, "reviewed": 1, "skipped": 1, "left": 1},
                                       "dog": {"flagged": 3, "reviewed": 0, "skipped": 0, "left": 3},
                                       "fox": {"flagged": 3, "reviewed": 0, "skipped": 0, "left": 3}}
    budget = np.zeros(len(table), bool)
    budget[table.index[table["path"] == cat[2]]] = True
    assert review.class_counts(table, budget)["left in budget"].tolist() == [1, 0, 0]


def test_why_flagged_words_the_evidence(samples):
    frame = samples.assign(loss=[float(i % 10) for i in range(len(samples))])
    pct = review.loss_percentiles(frame)
    assert pct[9] == 100.0 and pct[0] == 10.0  # the class's highest and lowest of ten losses
    given = frame["given_label"].to_numpy()
    neighbours = np.array([[10, 11, 12, 3, -1]] * len(frame))
    assert review.neighbour_summary(0, neighbours, given) == ("dog", 3, 4)  # -1: no neighbour
    assert review.neighbour_summary(0, None, given) is None
    row = frame.assign(loss_pct=pct).iloc[9]
    assert review.why_flagged(row, ("dog", 3, 4)) == (f"loss ≥ 100 % of images labelled cat · clean prob "
                                                     f"{row['clean_prob']:.2f} · 3 of 4 nearest images are labelled dog")
    assert review.why_flagged(row.drop("loss_pct"), ("fox", 1, 5)).endswith("1 of 5 nearest images is labelled fox")


def test_plan_turns_actions_into_store_writes(samples):
    rows = samples[samples["flagged"]].iloc[:4]
    keep = review.plan(rows, "keep")
    assert sorted((w.action, w.label, len(w.paths)) for w in keep) == sorted(
        ("keep", g, n) for g, n in rows["given_label"].value_counts().items())
    accept = review.plan(rows, "accept")
    assert all(w.action == "relabel" for w in accept)
    same = rows.assign(suggested_label=rows["given_label"])
    assert {w.action for w in review.plan(same, "accept")} == {"keep"}  # accepting the given label = keep
    relabel_to_given = review.plan(rows.iloc[:1], "relabel", rows["given_label"].iloc[0])
    assert relabel_to_given[0].action == "keep"
    assert review.plan(rows, "discard")[0].label is None
    assert [(w.action, w.label, len(w.paths)) for w in review.plan(rows, "skip")] == [("skip", None, len(rows))]
    assert review.describe("skip", 2) == "skipped (unsure, shown again at the end) 2 images"
    with pytest.raises(ValueError, match="needs a class"):
        review.plan(rows, "relabel")
    with pytest.raises(ValueError, match="unknown review action"):
        review.plan(rows, "delete")  # type: ignore[arg-type]


def test_apply_and_undo_a_batch(tmp_path, samples):
    store = DecisionStore(tmp_path / "d.sqlite")
    rows = samples[samples["flagged"]].iloc[:3]
    store.decide([rows["path"].iloc[0]], "relabel", "fox", source="other")
    entry = review.apply_action(store, rows, "discard", source="me")
    assert entry.description == "discarded 3 images"
    assert {d.action for d in store.all().values()} == {"discard"}
    assert review.undo(store, entry, source="me") == review.UndoResult(restored=3, skipped=0)
    now = store.all()
    assert list(now) == [rows["path"].iloc[0]] and now[rows["path"].iloc[0]].label == "fox"


def test_undo_leaves_alone_what_another_tab_decided_since(tmp_path, samples):
    store = DecisionStore(tmp_path / "d.sqlite")
    rows = samples[samples["flagged"]].iloc[:3]
    a, b, c = rows["path"].tolist()
    entry = review.apply_action(store, rows, "discard", source="tab-1")
    store.decide([b], "relabel", "fox", source="tab-2")  # another tab, after tab 1's batch
    store.clear([c], source="tab-2")
    result = review.undo(store, entry, source="tab-1")
    assert result == review.UndoResult(restored=1, skipped=2)
    now = store.all()
    assert a not in now  # tab 1's own discard is undone
    assert (now[b].action, now[b].label) == ("relabel", "fox")  # tab 2's later decisions stand
    assert c not in now
    assert review.undo_message(entry, result) == ("Undone: discarded 3 images. 2 images were not put back: another "
                                                  "tab changed them since.")
    assert review.undo_message(entry, review.UndoResult(2, 1)).endswith("1 image was not put back: another tab "
                                                                         "changed it since.")


def test_selection_file_round_trip(tmp_path):
    run = write_fake_run(tmp_path / "runs").run
    assert review.load_selection(run) is None
    review.save_selection(run, ["a/1.png", "b/2.png"], "picked")
    assert review.load_selection(run) == review.Selection(("a/1.png", "b/2.png"), "picked")
    review.clear_selection(run)
    assert review.load_selection(run) is None


def test_top3_text():
    row = pd.Series({"top1_label": "dog", "top1_prob": 0.7, "top2_label": "cat", "top2_prob": 0.2,
                     "top3_label": "", "top3_prob": np.nan})
    assert review.top3_text(row) == "dog 0.70 · cat 0.20"


# ----------------------------------------------------------------------------- fit flags


def engine_config_of(flags: list[str], monkeypatch: pytest.MonkeyPatch, *, cuda: bool) -> RunConfig:
    """The RunConfig `python -m engine fit DATA --run-dir R <flags>` starts with on a machine with(out) a GPU."""
    import torch

    from engine import cli
    from engine.cli import run as cli_run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)  # what the engine asks to pick its profile
    args = cli.build_parser().parse_args(["fit", "data", "--run-dir", "run", *flags])
    return cli_run.fit_config(args)


def test_every_form_setting_is_a_config_field_of_the_kind_its_widget_shows():
    cfg = RunConfig()
    for setting in (train_form.DEVICE, *train_form.SETTINGS):
        kind = train_form.kind_of(setting.key)
        value = train_form.value_of(cfg, setting.key)
        assert value in kind if isinstance(kind, tuple) else type(value) is kind, setting.key
    assert train_form.kind_of("classify.loss") == ("ce", "nfl+rce", "elr", "mixup-boot")
    assert train_form.kind_of("pretrain.enabled") is bool and train_form.kind_of("split.threshold") is float
    with pytest.raises(KeyError, match="unknown config key: classify.nope"):
        train_form.kind_of("classify.nope")
    with pytest.raises(KeyError, match="not a single value"):
        train_form.kind_of("augment.jitter")


def test_set_values_read_back_as_the_same_values():
    from engine.cli.run import _parse_sets

    values = {"classify.loss": "nfl+rce", "pretrain.enabled": False, "pretrain.lr": 0.05, "seed": 3,
              "finetune.weighting": "reference", "embed.enabled": True, "augment.crop_scale": (0.3, 1.0),
              "text": "12"}
    flags = train_form.fit_flags(values)
    assert flags[::2] == ["--set"] * len(values)
    assert _parse_sets(flags[1::2]) == {**values, "augment.crop_scale": [0.3, 1.0]}
    assert train_form.fit_flags({}, truth="~/t.csv", finetune=True) == ["--truth", str(Path("~/t.csv").expanduser()),
                                                                        "--finetune"]


@pytest.mark.parametrize(("device", "detected", "cuda"), [
    ("auto", "cpu", False), ("auto", "cuda", True), ("cpu", "cuda", True), ("cuda", "cuda", True), ("cpu", "cpu", False),
])
def test_the_engine_runs_the_profile_the_form_shows(device, detected, cuda, monkeypatch):
    shown = train_form.initial_values(device, detected)
    cfg = engine_config_of(train_form.fit_flags(shown), monkeypatch, cuda=cuda)
    assert {key: train_form.value_of(cfg, key) for key in shown} == shown
    profile = profile_for(train_form.engine_device(device, detected))
    # fields the form does not show come from the same profile the form shows
    assert cfg.finetune.batch_size == profile.finetune.batch_size


def test_values_typed_into_the_form_are_the_values_run(monkeypatch):
    typed = train_form.initial_values("cpu", "cuda") | {
        "classify.loss": "ce", "pretrain.epochs": 100, "classify.epochs": 30, "classify.batch_size": 256,
        "pretrain.enabled": False, "data.image_size": 48, "seed": 9}
    cfg = engine_config_of(train_form.fit_flags(typed), monkeypatch, cuda=True)
    assert {key: train_form.value_of(cfg, key) for key in typed} == typed
    assert cfg.pretrain.batch_size == 128  # a CPU run on a GPU machine keeps the CPU profile where not typed


def test_gpu_defaults_follow_the_gpu_profile():
    assert train_form.initial_values("auto", "cuda")["pretrain.epochs"] == 100
    assert train_form.initial_values("auto", "cpu")["pretrain.epochs"] == profile_for("cpu").pretrain.epochs == 12
    assert train_form.initial_values("cuda", "cpu")["classify.epochs"] == profile_for("cuda").classify.epochs
    assert [train_form.engine_device(d, "cuda") for d in ("auto", "cpu", "cuda")] == ["cuda", "cpu", "cuda"]
    assert train_form.engine_device("auto", "cpu") == "cpu"


def test_launched_settings_read_the_command_with_the_engine_parser():
    command = ["/usr/bin/python", "-m", "engine", "fit", "/data/x", "--run-dir", "/ws/runs/r",
               *train_form.fit_flags({"classify.loss": "ce", "pretrain.enabled": False}), "--quiet"]
    assert train_form.launched_settings(command) == {"classify.loss": "ce", "pretrain.enabled": False}
    old_style = ["python", "-m", "engine", "fit", "d", "--run-dir", "r", "--loss", "elr", "--epochs", "3"]
    assert train_form.launched_settings(old_style) == {"classify.loss": "elr", "classify.epochs": 3}
    assert train_form.launched_settings(["python", "-m", "engine", "fit"]) == {}  # unreadable: nothing
    assert train_form.launched_settings([]) == {}


def test_truth_field_checks(tmp_path):
    assert train_form.check_truth("  ") == (None, None)
    assert train_form.check_truth(str(tmp_path / "x.csv"))[1].endswith("does not exist")
    (tmp_path / "t.txt").write_text("x")
    assert "not a .csv" in train_form.check_truth(str(tmp_path / "t.txt"))[1]
    (tmp_path / "t.csv").write_text("path,true_label\n")
    assert train_form.check_truth(str(tmp_path / "t.csv")) == (str((tmp_path / "t.csv").resolve()), None)


# ----------------------------------------------------------------------------- workspace and uploads


@pytest.mark.parametrize(("name", "parts"), [
    ("photos/cat/1.png", ["photos", "cat", "1.png"]),
    ("../../etc/passwd", ["etc", "passwd"]),
    ("/abs/./x.png", ["abs", "x.png"]),
    ("a\\..\\b\\c.png", ["a", "b", "c.png"]),
    ("we ird/na:me?.png", ["we ird", "na_me_.png"]),
    ("数据/猫/猫.png", ["数据", "猫", "猫.png"]),
    ("Ünïcödé/ελληνικά/صورة.png", ["Ünïcödé", "ελληνικά", "صورة.png"]),
    ("cafe\u0301/1.png", ["caf\u00e9", "1.png"]),  # macOS sends decomposed accents: NFC makes them one name
    ("a\tb/x\u202egnp.png", ["a_b", "x_gnp.png"]),  # control and bidi-override characters
    ("..hidden/<x>|y*.png", ["hidden", "_x__y_.png"]),
])
def test_safe_relative_parts(name, parts):
    assert workspace.safe_relative_parts(name) == parts


def test_safe_names_keep_classes_in_any_script_apart():
    assert workspace.safe_relative_parts("数据/猫/猫.png") != workspace.safe_relative_parts("数据/犬/犬.png")
    assert workspace.safe_name("café") != workspace.safe_name("cafè")
    assert workspace.safe_name("a:b") != workspace.safe_name("a::b")
    long = workspace.safe_name("猫" * 200 + ".png")
    assert long.endswith(".png") and len(long.encode()) <= 240 and set(long[:-4]) == {"猫"}


def test_run_ids_in_urls_are_checked(app_workspace):
    (app_workspace / "runs" / "2026-01-01T00-00-00_ab12").mkdir()
    assert workspace.run_path("2026-01-01T00-00-00_ab12") == app_workspace / "runs" / "2026-01-01T00-00-00_ab12"
    for bad in ("..", "../runs", "a/b", "", None, "x" * 200):
        assert workspace.run_path(bad) is None


class FakeUpload:
    def __init__(self, name: str, data: bytes) -> None:
        self.name = name
        self._data = data

    def getbuffer(self) -> memoryview:
        return memoryview(self._data)


def test_save_folder_stays_inside_and_descends_into_the_picked_folder(tmp_path):
    upload_dir = tmp_path / "up"
    files = [FakeUpload("pics/a/1.png", b"1"), FakeUpload("pics/../../../x.png", b"2"), FakeUpload("pics/n.txt", b"")]
    folder, left_out = datasets.save_folder(files, upload_dir)
    assert folder == upload_dir / "data" / "pics"
    assert left_out == 1
    written = sorted(p.relative_to(upload_dir).as_posix() for p in upload_dir.rglob("*") if p.is_file())
    assert written == ["data/pics/a/1.png", "data/pics/x.png"]  # ".." parts dropped, never above data/


def test_save_folder_keeps_classes_named_in_any_script(tmp_path):
    files = [FakeUpload("数据/猫/猫.png", b"cat"), FakeUpload("数据/犬/犬.png", b"dog"),
             FakeUpload("数据/café/1.png", b"e1"), FakeUpload("数据/cafè/1.png", b"e2")]
    folder, left_out = datasets.save_folder(files, tmp_path / "up")
    assert (folder.name, left_out) == ("数据", 0)
    assert {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == {
        "猫/猫.png": b"cat", "犬/犬.png": b"dog", "café/1.png": b"e1", "cafè/1.png": b"e2"}


def test_save_folder_refuses_two_names_that_become_one_file(tmp_path):
    files = [FakeUpload("pics/a/x:1.png", b"first"), FakeUpload("pics/a/x?1.png", b"second")]
    with pytest.raises(datasets.IntakeError) as caught:
        datasets.save_folder(files, tmp_path / "up")
    assert str(caught.value) == ("'pics/a/x?1.png' and 'pics/a/x:1.png' would both be saved as 'pics/a/x_1.png': "
                                 "rename one of them and upload the folder again")
    assert (tmp_path / "up" / "data" / "pics" / "a" / "x_1.png").read_bytes() == b"first"  # not overwritten


def test_save_zip_refuses_other_files(tmp_path):
    with pytest.raises(datasets.IntakeError, match="not a .zip"):
        datasets.save_zip(FakeUpload("photos.tar", b"x"), tmp_path)
    path = datasets.save_zip(FakeUpload("../../my data.zip", b"PK"), tmp_path)
    assert path == tmp_path / "my data.zip"


# ----------------------------------------------------------------------------- progress and history


def test_stage_rows_of_a_running_fit():
    status = {"state": "running", "phase": "fit", "stage": "warmup", "step": 5, "total": 20, "images_per_s": 1234.4,
              "eta_s": 3725, "completed_stages": ["prepare"]}
    events = [{"kind": "stage", "stage": "pretrain", "state": "skipped"},
              {"kind": "stage", "stage": "prepare", "state": "done", "seconds": 4.2}]
    rows = {r.stage: r for r in progress.stage_rows(status, events)}
    assert rows["prepare"].text == "Prepare images — done in 4 s"
    # a stage before the current one is done even when nothing recorded it (the worker moved past it)
    later = {r.stage: r for r in progress.stage_rows({**status, "stage": "train", "completed_stages": []}, [])}
    assert (later["prepare"].state, later["warmup"].state, later["train"].state) == ("done", "done", "running")
    assert rows["pretrain"].state == "skipped"
    assert rows["warmup"].fraction == 0.25
    assert rows["warmup"].text == "Warm-up (classifier head) · 5/20 · 1,234 images/s · ETA 1 h 02 min"
    assert rows["embed"].state == "waiting"
    assert [r.stage for r in progress.stage_rows({"phase": "finetune"}, [])] == ["supcon", "head", "refresh"]


def test_format_seconds():
    assert [progress.format_seconds(s) for s in (None, 0, 59.6, 61, 3600)] == ["–", "0 s", "1 min 00 s", "1 min 01 s",
                                                                              "1 h 00 min"]


def test_runs_table_and_settings_diff(tmp_path):
    a = write_fake_run(tmp_path / "runs", "2026-01-01T00-00-00_aaaa").run.path
    b = write_fake_run(tmp_path / "runs", "2026-01-02T00-00-00_bbbb", loss="nfl+rce", with_metrics=False).run.path
    frame = runs_table.runs_frame([b, a])
    assert frame[["run", "state", "loss", "pre-training", "epochs", "flagged"]].values.tolist() == [
        [b.name, "done", "nfl+rce", "on", "12 + 2 + 12", 9], [a.name, "done", "elr", "on", "12 + 2 + 12", 9]]
    assert pd.isna(frame["F1"].iloc[0]) and frame["F1"].iloc[1] == 0.8
    diff = runs_table.settings_diff(a, b)
    assert diff["setting"].tolist() == ["classify.loss", "dataset"]
    head = runs_table.headline_table([a, b])
    assert head.loc["F1"].iloc[0] == 0.8 and pd.isna(head.loc["F1"].iloc[1])
    assert head.loc["flagged"].tolist() == [9, 9]
    # what the page shows: whole counts, 3 decimals, a dash when unknown
    assert [runs_table.cell_text(v) for v in (9, 0.8, None, float("nan"), pd.NA, "elr")] == [
        9, "0.800", "–", "–", "–", "elr"]
    assert Path(runs_table.run_summary(a)["run"]).name == a.name


def test_stage_rows_ignore_the_events_of_an_earlier_attempt():
    from datetime import datetime, timezone

    status = {"state": "running", "phase": "finetune", "stage": "supcon", "step": 1, "total": 4,
              "started_at": "2026-01-01T00:10:00+00:00"}
    earlier = datetime(2026, 1, 1, 0, 5, tzinfo=timezone.utc).timestamp()  # noqa: UP017
    events = [{"kind": "stage", "stage": "head", "state": "done", "seconds": 3.0, "t": earlier},
              {"kind": "stage", "stage": "refresh", "state": "done", "seconds": 1.0, "t": earlier + 700}]
    rows = {r.stage: r for r in progress.stage_rows(status, events)}
    assert rows["head"].state == "waiting"  # done in the previous fine-tuning, not yet in this one
    assert rows["refresh"].state == "done"


def test_thumbnails_keep_the_aspect_ratio_and_survive_bad_files(tmp_path):
    import io

    from PIL import Image

    from ui.thumbs import make_thumbnail

    Image.new("L", (8, 8), 200).save(tmp_path / "digit.png")
    Image.new("RGB", (400, 200), (10, 20, 30)).save(tmp_path / "wide.jpg", quality=90)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    small = Image.open(io.BytesIO(make_thumbnail(str(tmp_path / "digit.png"), 96)))
    wide = Image.open(io.BytesIO(make_thumbnail(str(tmp_path / "wide.jpg"), 160)))
    broken = Image.open(io.BytesIO(make_thumbnail(str(tmp_path / "broken.png"), 64)))
    assert (small.size, small.mode, small.getpixel((50, 50))) == ((96, 96), "RGB", (200, 200, 200))
    assert wide.size == (160, 80)
    assert broken.size == (64, 64) and broken.getpixel((0, 0)) == (230, 230, 230)


# ----------------------------------------------------------------------------- the review cursor and class keys


def test_cursor_moves_pages_and_clamps():
    queue = [f"c/{i}.png" for i in range(30)]
    cursor = ReviewCursor(run="r").placed(queue)
    assert (cursor.position, cursor.page, cursor.page_start, cursor.page_stop(30), cursor.n_pages(30)) == (0, 0, 0, 24, 2)
    cursor = cursor.previous().placed(queue)
    assert cursor.position == 0
    cursor = cursor.next_page().placed(queue)
    assert (cursor.position, cursor.page, cursor.slot, cursor.page_stop(30)) == (24, 1, 0, 30)
    cursor = cursor.moved_to(99).placed(queue)
    assert (cursor.position, cursor.slot) == (29, 5)
    cursor = cursor.previous_page().placed(queue)
    assert cursor.position == 0
    assert cursor.moved_to(5).placed(queue[:3]).position == 2  # a shorter queue (filters): the last card
    assert ReviewCursor().placed([]).position == 0
    assert ReviewCursor(run="r", position=7).on_run("r").position == 7
    assert ReviewCursor(run="r", position=7).on_run("other") == ReviewCursor(run="other")


def test_cursor_steps_past_a_decided_card_and_back_to_an_undone_one():
    queue = [f"c/{i}.png" for i in range(10)]
    cursor = ReviewCursor(run="r").moved_to(3).placed(queue)
    after = cursor.after_decision("c/3.png", 3)
    assert after.placed(queue).position == 4  # still in the queue: the card after it
    without = [p for p in queue if p != "c/3.png"]  # left the queue (a status filter): the next card took its place
    assert after.placed(without).position == 3 and without[3] == "c/4.png"
    assert after.placed(queue[:4]).position == 3  # the last card decided: focus stays on the last
    back = after.placed(queue).after_undo(["c/3.png"])
    assert back.placed(queue).position == 3  # undo: back on the undone card
    batch = cursor.moved_to(8).after_undo(["c/6.png", "c/2.png", "c/5.png"])
    assert batch.placed(queue).position == 2  # a batch: its first card in queue order
    assert batch.placed(queue[7:]).position == 2  # none of them in the queue: the position stays, clamped
    assert cursor.after_undo([]) == cursor
    resolved = after.placed(queue)
    assert (resolved.decided, resolved.undone) == (None, ())  # resolved once: a rerun does not move again
    assert resolved.placed(queue).position == 4


@pytest.mark.parametrize(("classes", "keys"), [
    (tuple("0123456789"), [(d, d) for d in "1234567890"]),
    (("3", "1", "7"), [("1", "1"), ("3", "3"), ("7", "7")]),
    (("cat", "dog", "fox"), [("1", "cat"), ("2", "dog"), ("3", "fox")]),
    (tuple(f"c{i}" for i in range(12)), [(k, f"c{i}") for i, k in enumerate("1234567890")]),
    (("1", "2", "cat"), [("1", "1"), ("2", "2"), ("3", "cat")]),
    (("10", "11"), [("1", "10"), ("2", "11")]),
])
def test_class_keys(classes, keys):
    assert class_keys.class_keys(classes) == keys


def test_class_key_legend_and_classes_without_a_key():
    assert class_keys.legend(tuple("0123456789")) == "**digit keys** relabel to the class of that digit"
    assert class_keys.legend(("cat", "dog", "fox")) == "**1–3** relabel to the class named on the key"
    many = tuple(f"c{i}" for i in range(12))
    assert class_keys.without_key(many) == ["c10", "c11"]
    assert class_keys.legend(many).startswith("**1–9, 0** relabel to the class named on the key (other classes: type")
    assert class_keys.without_key(("cat", "dog")) == []


def test_short_names_keep_the_start_and_the_extension():
    assert review.short_name("img_01.png") == "img_01.png"
    cut = review.short_name("a_very_long_file_name_from_a_camera_0001.jpeg", 24)
    assert cut == "a_very_long…ra_0001.jpeg" and len(cut) == 24
    assert review.short_name("x" * 40, 10) == "xxxx…xxxxx"


# ----------------------------------------------------------------------------- data page, histogram


def test_examples_per_class_are_a_seeded_random_sample(tmp_path):
    data = write_image_classes(tmp_path / "d", ("a", "b"), per_class=20)
    first = datasets.summarize(data)
    again = datasets.summarize(data)
    names = [Path(p).name for p in first.examples["a"]]
    assert len(names) == 6 and len(set(names)) == 6
    assert names != [f"img_{j:02d}.png" for j in range(6)]  # not the first six by name
    assert first.examples == again.examples  # the same on every visit
    assert datasets.summarize(data, seed=1).examples != first.examples
    small = datasets.summarize(write_image_classes(tmp_path / "s", ("a", "b"), per_class=3))
    assert sorted(Path(p).name for p in small.examples["a"]) == ["img_00.png", "img_01.png", "img_02.png"]


def test_loss_histogram_uses_a_log_scale_where_a_spike_would_hide_the_noisy_component():
    rng = np.random.default_rng(0)
    loss = np.concatenate([np.zeros(1400), rng.uniform(0, 0.05, 100), rng.normal(0.7, 0.1, 300).clip(0, 1)])
    split = {"means": [0.01, 0.7], "stds": [0.03, 0.1], "weights": [0.83, 0.17], "loss_threshold": 0.4}
    fig = charts.loss_histogram_figure(loss, split)
    assert fig.layout.yaxis.type == "log"
    low, high = fig.layout.yaxis.range  # log10 units
    noisy_peak = max(fig.data[2].y)
    assert low < np.log10(noisy_peak) < high and 10**high >= max(fig.data[0].y)
    assert noisy_peak < max(fig.data[0].y) / 10  # on a linear axis it would be a flat line at the bottom
    even = charts.loss_histogram_figure(rng.uniform(0, 1, 400), {**split, "weights": [0.5, 0.5], "stds": [0.2, 0.2]})
    assert even.layout.yaxis.type is None and even.layout.yaxis.title.text == "images"  # no spike: linear counts


def test_with_a_budget_the_form_leaves_the_epochs_to_it():
    from engine.cli import build_parser
    from engine.cli.run import fit_overrides
    from ui.train_form import fit_flags, initial_values

    values = initial_values("cpu", "cpu")
    keys = set(fit_overrides(build_parser().parse_args(["fit", "d", "--run-dir", "r", *fit_flags(values)])))
    assert {"pretrain.epochs", "classify.epochs"} <= keys  # no budget: the epochs shown are the epochs trained
    values["budget_s"] = 600.0
    overrides = fit_overrides(build_parser().parse_args(["fit", "d", "--run-dir", "r", *fit_flags(values)]))
    assert overrides["budget_s"] == 600.0 and not {"pretrain.epochs", "classify.epochs"} & set(overrides)


def test_with_a_time_limit_the_form_sends_only_the_epochs_typed_into_it():
    from engine.cli import build_parser
    from engine.cli.run import fit_overrides
    from ui.train_form import fit_flags, initial_values

    def overrides(values, profile):
        return fit_overrides(build_parser().parse_args(["fit", "d", "--run-dir", "r", *fit_flags(values, profile=profile)]))

    values = initial_values("cpu", "cpu")
    assert values["time_limit_s"] == -1.0  # the CPU profile's auto ceiling is what the form shows
    cpu = profile_for("cpu")
    sent = overrides(values, cpu)
    assert sent["time_limit_s"] == -1.0 and not {"pretrain.epochs", "classify.epochs"} & set(sent)
    sent = overrides({**values, "classify.epochs": 30}, cpu)
    assert sent["classify.epochs"] == 30 and "pretrain.epochs" not in sent  # typed: kept; left alone: the engine's
    sent = overrides({**values, "time_limit_s": 0.0}, cpu)
    assert sent["pretrain.epochs"] == 12 and sent["classify.epochs"] == 36  # no limit: the epochs shown are trained
    gpu = initial_values("cuda", "cuda")
    assert gpu["time_limit_s"] == 0.0 and {"pretrain.epochs", "classify.epochs"} <= set(overrides(gpu, profile_for("cuda")))


def test_the_loss_histogram_names_the_scale_the_mixture_saw() -> None:
    split = {"means": [0.1, 0.6], "stds": [0.1, 0.1], "weights": [0.7, 0.3], "loss_threshold": 0.4}
    loss = np.random.default_rng(0).uniform(0, 1, 200)
    assert charts.loss_histogram_figure(loss, split).layout.xaxis.title.text == "normalised loss"
    assert charts.loss_histogram_figure(loss, {**split, "scale": "sqrt"}).layout.xaxis.title.text == "normalised √loss"
