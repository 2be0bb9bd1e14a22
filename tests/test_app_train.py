"""Train page (AppTest, engine jobs faked): the form's flags, the one-run lock, live progress, Stop/Resume, history."""

from __future__ import annotations

import os

from fixtures_runs import hold_worker, install_fake_jobs, open_page, write_fake_run

from engine.config import RunConfig, profile_for
from engine.runs.atomic import now_iso
from engine.runs.rundir import RunDir
from ui import train_form, workspace


def form_widget(at, label: str):
    for kind in (at.selectbox, at.number_input, at.checkbox, at.text_input):
        for w in kind:
            if w.label == label:
                return w
    raise KeyError(label)


def submit(at):
    next(b for b in at.button if b.label == "Start").click().run()
    return at


def engine_config(flags: list[str], data, monkeypatch, *, cuda: bool = False) -> RunConfig:
    """What the real `fit` command line makes of the flags the form emitted (the worker sees `cuda`)."""
    import torch

    from engine import cli
    from engine.cli import run as cli_run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    return cli_run.fit_config(cli.build_parser().parse_args(["fit", str(data), "--run-dir", "r", *flags]))


def form_values(at) -> dict:
    """{config key: the value its widget shows}, for every setting of the form and the device."""
    return {s.key: form_widget(at, s.label).value for s in (train_form.DEVICE, *train_form.SETTINGS)}


def test_form_defaults_come_from_the_cpu_profile(app_workspace, fake_jobs):
    at = open_page("train")
    assert not at.exception
    cfg = profile_for("cpu")
    shown = form_values(at)
    assert shown == {s.key: train_form.value_of(cfg, s.key) for s in train_form.SETTINGS} | {"device": "auto"}
    assert (shown["classify.loss"], shown["pretrain.epochs"], shown["classify.batch_size"]) == ("elr", 12, 128)
    assert any(c.value == "Detected: CPU only" for c in at.caption)
    assert any("truth.csv" in c.value and "automatically" in c.value for c in at.caption)  # the bundled sample's


def test_gpu_profile_defaults_when_a_gpu_is_detected(app_workspace, monkeypatch):
    install_fake_jobs(monkeypatch, devices={"cuda": True, "devices": [{"name": "NVIDIA H100", "memory_gb": 79.6}],
                                            "default": "cuda"})
    at = open_page("train")
    assert any(c.value == "Detected: GPU: NVIDIA H100 (80 GB)" for c in at.caption)
    assert form_widget(at, "Pre-training epochs").value == 100


def shown_schedule(at) -> tuple[int, int, int]:
    return tuple(int(form_widget(at, label).value) for label in ("Pre-training epochs", "Classifier epochs",
                                                                  "Batch size"))


def test_choosing_cpu_on_a_gpu_machine_shows_and_runs_the_cpu_profile(app_workspace, monkeypatch, tmp_path):
    fake = install_fake_jobs(monkeypatch, devices={"cuda": True, "devices": [{"name": "NVIDIA H100", "memory_gb": 80}],
                                                   "default": "cuda"})
    data = tmp_path / "digits"
    (data / "a").mkdir(parents=True)
    at = open_page("train", data=data)
    assert shown_schedule(at) == (100, 30, 256)  # auto on a GPU machine: the GPU profile
    form_widget(at, "Device").select("cpu").run()
    assert shown_schedule(at) == (12, 36, 128)  # the form now shows what a CPU run trains for
    shown = form_values(at)
    submit(at)
    assert not at.exception
    cfg = engine_config(fake.calls[0][1][2], data, monkeypatch, cuda=True)  # the worker sees the GPU too
    assert {key: train_form.value_of(cfg, key) for key in shown} == shown
    assert (cfg.device, cfg.pretrain.epochs, cfg.classify.epochs, cfg.classify.batch_size) == ("cpu", 12, 36, 128)


def test_the_flags_of_start_give_the_run_exactly_the_values_on_the_form(app_workspace, fake_jobs, tmp_path,
                                                                          monkeypatch):
    data = tmp_path / "digits"
    (data / "a").mkdir(parents=True)
    (data / "b").mkdir()
    at = open_page("train", data=data)
    form_widget(at, "Loss").select("nfl+rce")
    form_widget(at, "Pre-training epochs").set_value(1)
    form_widget(at, "Pre-training batch size").set_value(64)
    form_widget(at, "Warm-up epochs").set_value(0)
    form_widget(at, "Classifier epochs").set_value(2)
    form_widget(at, "Batch size").set_value(16)
    form_widget(at, "Image size (px, 0 = auto)").set_value(24)
    form_widget(at, "Seed").set_value(5)
    form_widget(at, "Also fine-tune (phase b) right after").check()
    shown = form_values(at)
    submit(at)
    assert not at.exception
    assert fake_jobs.names() == ["start"]
    _, (got_data, run_dir, flags), kwargs = fake_jobs.calls[0]
    assert got_data == data
    assert flags[-1] == "--finetune" and "--truth" not in flags
    assert set(flags[:-1][::2]) == {"--set"}  # every setting travels as --set key=value
    cfg = engine_config(flags, data, monkeypatch)
    assert {key: train_form.value_of(cfg, key) for key in shown} == shown
    assert (cfg.classify.loss, cfg.pretrain.batch_size, cfg.classify.batch_size, cfg.data.image_size) == (
        "nfl+rce", 64, 16, 24)
    assert cfg.finetune_after_fit is True
    assert run_dir.parent == app_workspace / "runs"
    assert kwargs["workspace"] == app_workspace
    assert at.query_params["run"] == run_dir.name  # the new run is in the URL: a refresh re-attaches to it
    assert any("queued" in m.value for m in at.markdown)


def test_a_run_can_start_without_the_remembered_decisions(app_workspace, fake_jobs, tmp_path, monkeypatch):
    at = open_page("train")
    box = form_widget(at, "Use the decisions remembered for these images")
    assert box.value is True  # by default a run starts with what the workspace remembers for its images
    box.uncheck()
    submit(at)
    flags = fake_jobs.calls[0][1][2]
    assert "review.memory=false" in flags
    assert engine_config(flags, tmp_path, monkeypatch).review.memory is False


def test_no_pretraining_and_a_truth_file(app_workspace, fake_jobs, tmp_path, monkeypatch):
    truth = tmp_path / "labels_truth.csv"
    truth.write_text("path,true_label\n")
    at = open_page("train")
    form_widget(at, "Pre-train the encoder (SimCLR)").uncheck()
    form_widget(at, "Seed").set_value(7)
    form_widget(at, "Truth file (optional)").input(str(truth))
    submit(at)
    flags = fake_jobs.calls[0][1][2]
    assert flags[-2:] == ["--truth", str(truth)]
    cfg = engine_config(flags, tmp_path, monkeypatch)
    assert (cfg.pretrain.enabled, cfg.seed, cfg.classify.epochs, cfg.finetune_after_fit) == (False, 7, 36, False)


def test_bad_truth_file_and_missing_gpu_are_refused(app_workspace, fake_jobs, tmp_path):
    at = open_page("train")
    form_widget(at, "Truth file (optional)").input(str(tmp_path / "missing.csv"))
    submit(at)
    assert at.error and "missing.csv does not exist" in at.error[0].value
    form_widget(at, "Truth file (optional)").input("")
    form_widget(at, "Device").select("cuda")
    submit(at)
    assert at.error and "no GPU was found" in at.error[0].value
    assert fake_jobs.calls == []


def test_refuses_to_start_while_another_run_is_active(fake_run, fake_jobs):
    fake_run.run.write_status(state="running", pid=os.getpid(), stage="train", step=3, total=10)
    worker = hold_worker(fake_run.run)  # its worker is alive
    shown = write_fake_run(workspace.runs_root(), "2026-11-27T09-00-00_oldr")  # the page shows another run
    at = open_page("train", run_id=shown.run_id)
    submit(at)
    assert [e.value for e in at.error] == [f"Not started: run {fake_run.run_id} is still active: stop it or wait for "
                                           "it to finish (one run at a time)."]
    assert fake_jobs.calls == []
    worker.close()


def test_a_double_click_on_start_leaves_no_error_behind(app_workspace, fake_jobs):
    at = open_page("train")
    submit(at)  # the first click starts the run and shows it
    run_id = at.query_params["run"]
    assert any(f"Run `{run_id}` — **queued**" in m.value for m in at.markdown)
    submit(at)  # the second click arrives while it trains
    assert fake_jobs.names() == ["start"]
    assert [e.value for e in at.error] == []  # nothing red stays on the page while the run trains
    assert [t.value for t in at.toast] == [f"Not started: run {run_id}, shown above, is still training (one run at "
                                           "a time)."]
    assert any(f"Run `{run_id}` — **queued**" in m.value for m in at.markdown)


def test_live_progress_of_a_running_run_and_stop(fake_run, fake_jobs):
    fake_run.run.write_status(state="running", pid=os.getpid(), stage="train", step=30, total=120,
                              images_per_s=512.0, eta_s=75, completed_stages=["prepare", "pretrain", "warmup"],
                              message="epoch 2/12")
    worker = hold_worker(fake_run.run)
    at = open_page("train", run_id=fake_run.run_id)
    texts = [p.proto.text for p in at.get("progress")]
    assert "Training (noise-robust loss) · 30/120 · 512 images/s · ETA 1 min 15 s" in texts
    assert "Pre-training (SimCLR) — done in 1 s" in texts
    assert "Embedding map (UMAP) — waiting" in texts
    assert at.get("plotly_chart"), "live loss curves"
    at.button(key="train_progress_stop").click().run()
    assert fake_jobs.names() == ["stop"]
    assert fake_jobs.calls[0][1][0] == fake_run.run.path
    worker.close()


def test_a_failed_run_shows_its_log_and_can_resume(fake_run, fake_jobs):
    fake_run.run.write_status(state="failed", error="CUDA out of memory", stage="train")
    fake_run.run.log.write_text("step 1\nTraceback (most recent call last):\nRuntimeError: CUDA out of memory\n")
    at = open_page("train", run_id=fake_run.run_id)
    assert at.error[0].value == "The run failed: CUDA out of memory"
    assert "RuntimeError: CUDA out of memory" in at.code[0].value
    at.button(key="train_progress_resume").click().run()
    assert fake_jobs.names() == ["resume"]


def heading(at) -> str:
    return next(m.value for m in at.markdown if m.value.startswith(":material/") and " Run `" in m.value)


def test_a_dead_worker_reads_as_interrupted_and_can_resume(fake_run, fake_jobs):
    fake_run.run.write_status(state="running", pid=2**22 + 12345, stage="pretrain", updated_at=now_iso())
    at = open_page("train", run_id=fake_run.run_id)  # no process holds the run's lock: its worker is gone
    assert f"Run `{fake_run.run_id}` — **interrupted** — Resume" in heading(at)
    assert RunDir(fake_run.run.path).read_status()["state"] == "running"  # readers never write status.json
    at.button(key="train_progress_resume").click().run()
    assert fake_jobs.names() == ["resume"]


def test_an_interrupted_run_says_so_and_offers_resume(fake_run, fake_jobs):
    fake_run.run.write_status(state="interrupted", pid=None, stage="train", step=33, total=48,
                              message="worker gone")
    at = open_page("train", run_id=fake_run.run_id)
    assert f"Run `{fake_run.run_id}` — **interrupted** — Resume" in heading(at)
    assert any(c.value.startswith("The worker stopped before the end") for c in at.caption)
    assert "Training (noise-robust loss) · 33/48" in [p.proto.text for p in at.get("progress")]
    at.button(key="train_progress_resume").click().run()
    assert fake_jobs.names() == ["resume"]


def test_a_stopped_run_names_the_resume_button_not_a_command_line_flag(fake_run, fake_jobs):
    fake_run.run.write_status(state="cancelled", pid=None, stage="train", message="stopped; continue with --resume")
    at = open_page("train", run_id=fake_run.run_id)
    texts = [m.value for m in (*at.markdown, *at.caption, *at.info, *at.error)]
    assert not any("--resume" in t for t in texts)
    assert "Stopped. **Resume** continues from the last finished epoch." in texts
    assert at.button(key="train_progress_resume").label == "Resume"
    fake_run.run.samples.unlink()  # stopped before its results: the other pages say the same
    review = open_page("review", run_id=fake_run.run_id)
    assert [i.value for i in review.info] == [f"Run {fake_run.run_id} was stopped before its results: **Resume** it "
                                              "on Train, or start a new one there."]


def test_skipped_stages_count_as_done(fake_run, fake_jobs):
    fake_run.run.append_event(kind="stage", stage="prepare", state="skipped", message="decoded cache is up to date")
    at = open_page("train", run_id=fake_run.run_id)
    assert [e.label for e in at.expander][0] == "7 of 7 stages done (1 skipped: nothing to do)"
    assert "Prepare images — skipped (decoded cache is up to date)" in [p.proto.text for p in at.get("progress")]


def test_the_whole_run_eta_shows_while_it_trains(fake_run, fake_jobs):
    names = ["prepare", "pretrain", "warmup", "train", "predict", "split"]
    fake_run.run.write_status(state="running", stage="train", step=33, total=48, eta_s=20, run_eta_s=300,
                              stages=[{"stage": s, "state": "done" if i < 3 else "waiting"} for i, s in enumerate(names)])
    worker = hold_worker(fake_run.run)  # noqa: F841 - its worker is alive while the page renders
    at = open_page("train", run_id=fake_run.run_id)
    assert "**About 5 min 00 s left** for the whole run" in [m.value for m in at.markdown]
    stages = [p.proto.text for p in at.get("progress")]
    assert len(stages) == 6 and not any("Embedding map" in t for t in stages)  # the stages status.json names


def test_a_negative_elr_loss_is_explained_where_the_loss_is_shown(fake_run, fake_jobs):
    fake_run.run.append_event(kind="epoch", stage="train", epoch=4, epochs=4, loss=-5.4, lr=0.01)
    at = open_page("train", run_id=fake_run.run_id)
    assert any("ELR's loss goes below zero" in c.value and "negative by construction" in c.value for c in at.caption)
    clean = write_fake_run(workspace.runs_root(), "2026-11-27T11-00-00_ce00", loss="ce")
    at = open_page("train", run_id=clean.run_id)
    assert not any("ELR's loss" in c.value for c in at.caption)


def test_past_runs_table_and_comparison(fake_run, fake_jobs):
    other = write_fake_run(workspace.runs_root(), "2026-11-27T11-00-00_othr", loss="ce", with_metrics=False)
    at = open_page("train", run_id=fake_run.run_id)
    table = at.dataframe[0].value
    assert table["run"].tolist() == [other.run_id, fake_run.run_id]
    assert table["loss"].tolist() == ["ce", "elr"]
    assert table["flagged"].tolist() == [9, 9]
    assert table["F1"].tolist() == ["–", "0.800"]  # a run without a truth file: a dash, not "None"
    diff = at.dataframe[1].value
    assert diff.set_index("setting").loc["classify.loss"].tolist() == ["ce", "elr"]
    assert len(at.get("plotly_chart")) == 2  # this run's curves + the comparison


def test_a_run_just_started_lists_its_settings_and_no_none(fake_run, fake_jobs):
    at = open_page("train", run_id=fake_run.run_id)
    form_widget(at, "Loss").select("ce")
    form_widget(at, "Warm-up epochs").set_value(1)
    submit(at)
    shown = at.dataframe[0].value
    row = shown[shown["run"] == at.query_params["run"]].iloc[0]  # queued: no config.json, no results yet
    # the epochs left at the profile's are the engine's to shrink to the time limit: known once config.json is
    assert (row["state"], row["loss"], row["pre-training"], row["epochs"]) == ("queued", "ce", "on", "– + 1 + –")
    assert (row["flagged"], row["F1"], row["accuracy"]) == ("–", "–", "–")
    assert not (shown == "None").any().any() and not shown.isna().any().any()


def test_every_page_tells_what_is_next(fake_run, fake_jobs):
    for name in ("data", "train", "inspect", "review", "finetune", "export"):
        at = open_page(name, run_id=fake_run.run_id)
        assert not at.exception, name
        assert any(link.proto.label.startswith("Next:") for link in at.get("page_link")), name


def test_the_time_limit_field_leaves_untouched_epochs_to_the_engine(app_workspace, fake_jobs, tmp_path, monkeypatch):
    data = tmp_path / "digits"
    (data / "a").mkdir(parents=True)
    (data / "b").mkdir()
    at = open_page("train", data=data)
    assert form_widget(at, "Time limit (s)").value == -1.0  # auto: the CPU profile's ceiling
    form_widget(at, "Classifier epochs").set_value(3)
    submit(at)
    flags = fake_jobs.calls[0][1][2]
    assert "time_limit_s=-1.0" in flags and "classify.epochs=3" in flags
    assert not any(f.startswith("pretrain.epochs=") for f in flags)  # left at the profile's: the engine may shrink it
    cfg = engine_config(flags, data, monkeypatch)
    assert (cfg.pretrain.epochs, cfg.classify.epochs, cfg.time_limit_s) == (12, 3, -1.0)


def test_no_time_limit_sends_every_epoch_shown(app_workspace, fake_jobs, tmp_path, monkeypatch):
    data = tmp_path / "digits"
    (data / "a").mkdir(parents=True)
    (data / "b").mkdir()
    at = open_page("train", data=data)
    form_widget(at, "Time limit (s)").set_value(0)
    submit(at)
    flags = fake_jobs.calls[0][1][2]
    assert {"pretrain.epochs=12", "classify.epochs=36", "time_limit_s=0.0"} <= set(flags)


def test_the_epochs_a_time_limit_chose_are_said_on_the_run(fake_run, fake_jobs):
    at = open_page("train", run_id=fake_run.run_id)
    assert not any("time limit" in c.value.lower() for c in at.caption)  # no plan: nothing to say
    fake_run.run.append_event(kind="plan", message="time limit 150 s for 1,797 images: 1 pre-training and 6 "
                                                   "classifier epochs instead of 12 and 12")
    at = open_page("train", run_id=fake_run.run_id)
    assert any(c.value.endswith("Time limit 150 s for 1,797 images: 1 pre-training and 6 classifier epochs instead "
                                "of 12 and 12") for c in at.caption)


def test_the_seconds_fields_read_as_whole_seconds(app_workspace, fake_jobs):
    at = open_page("train")
    for label in ("Time budget (s)", "Time limit (s)"):
        w = form_widget(at, label)
        assert w.proto.format == "%.0f" and w.proto.step == 1.0, label


def test_the_form_starts_at_auto_size_and_the_run_says_which_size_it_chose(fake_run, fake_jobs):
    at = open_page("train")
    assert form_widget(at, "Image size (px, 0 = auto)").value == 0  # auto: the run chooses from its images and device
    at = open_page("train", run_id=fake_run.run_id)
    assert not any("working size" in c.value.lower() for c in at.caption)
    fake_run.run.append_event(kind="size", size=32, native=375, message="working size 32 px (the images' shorter "
                              "side is about 375 px; the CPU's best measured size is 32 px)")
    at = open_page("train", run_id=fake_run.run_id)
    assert any(c.value.endswith("Working size 32 px (the images' shorter side is about 375 px; the CPU's best "
                                "measured size is 32 px)") for c in at.caption)
