"""Train page (AppTest, engine jobs faked): the form's flags, the one-run lock, live progress, Stop/Resume, history."""

from __future__ import annotations

import os

from fixtures_runs import hold_worker, install_fake_jobs, open_page, write_fake_run

from engine.config import RunConfig
from engine.runs.atomic import now_iso
from engine.runs.rundir import RunDir
from ui import workspace


def form_widget(at, label: str):
    for kind in (at.selectbox, at.number_input, at.checkbox, at.text_input):
        for w in kind:
            if w.label == label:
                return w
    raise KeyError(label)


def submit(at):
    next(b for b in at.button if b.label == "Start").click().run()
    return at


def test_form_defaults_come_from_runconfig(app_workspace, fake_jobs):
    at = open_page("train")
    assert not at.exception
    cfg = RunConfig()
    assert form_widget(at, "Loss").value == cfg.classify.loss == "elr"
    assert form_widget(at, "Pre-training epochs").value == cfg.pretrain.epochs
    assert form_widget(at, "Classifier epochs").value == cfg.classify.epochs
    assert form_widget(at, "Batch size").value == cfg.classify.batch_size
    assert form_widget(at, "Image size (px)").value == cfg.data.image_size
    assert form_widget(at, "Seed").value == cfg.seed
    assert form_widget(at, "Device").value == "auto"
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
    import torch

    from engine import cli
    from engine.cli import run as cli_run

    fake = install_fake_jobs(monkeypatch, devices={"cuda": True, "devices": [{"name": "NVIDIA H100", "memory_gb": 80}],
                                                   "default": "cuda"})
    data = tmp_path / "digits"
    (data / "a").mkdir(parents=True)
    at = open_page("train", data=data)
    assert shown_schedule(at) == (100, 30, 256)  # auto on a GPU machine: the GPU profile
    form_widget(at, "Device").select("cpu").run()
    assert shown_schedule(at) == (12, 12, 128)  # the form now shows what a CPU run trains for
    submit(at)
    assert not at.exception
    flags = fake.calls[0][1][2]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # the worker sees the GPU too
    cfg = cli_run.fit_config(cli.build_parser().parse_args(["fit", str(data), "--run-dir", "r", *flags]))
    assert (cfg.device, cfg.pretrain.epochs, cfg.classify.epochs, cfg.classify.batch_size) == ("cpu", 12, 12, 128)


def test_start_passes_the_changed_settings_as_fit_flags(app_workspace, fake_jobs, tmp_path):
    data = tmp_path / "digits"
    (data / "a").mkdir(parents=True)
    (data / "b").mkdir()
    at = open_page("train", data=data)
    form_widget(at, "Loss").select("ce")
    form_widget(at, "Pre-training epochs").set_value(1)
    form_widget(at, "Classifier epochs").set_value(2)
    form_widget(at, "Batch size").set_value(16)
    form_widget(at, "Also fine-tune (phase b) right after").check()
    submit(at)
    assert not at.exception
    assert fake_jobs.names() == ["start"]
    _, (got_data, run_dir, flags), kwargs = fake_jobs.calls[0]
    assert got_data == data
    assert flags == ["--loss", "ce", "--pretrain-epochs", "1", "--epochs", "2", "--batch-size", "16", "--image-size",
                     "32", "--seed", "0", "--finetune"]
    assert run_dir.parent == app_workspace / "runs"
    assert kwargs["workspace"] == app_workspace
    assert at.query_params["run"] == run_dir.name  # the new run is in the URL: a refresh re-attaches to it
    assert any("queued" in m.value for m in at.markdown)


def test_no_pretraining_and_a_truth_file(app_workspace, fake_jobs, tmp_path):
    truth = tmp_path / "labels_truth.csv"
    truth.write_text("path,true_label\n")
    at = open_page("train")
    form_widget(at, "Pre-train the encoder (SimCLR)").uncheck()
    form_widget(at, "Seed").set_value(7)
    form_widget(at, "Truth file (optional)").input(str(truth))
    submit(at)
    assert fake_jobs.calls[0][1][2] == ["--loss", "elr", "--no-pretrain", "--epochs", "12", "--image-size", "32",
                                        "--seed", "7", "--truth", str(truth)]


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
    at = open_page("train")
    submit(at)
    assert at.error and "still active" in at.error[0].value
    assert fake_jobs.calls == []
    worker.close()


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


def test_a_dead_worker_reads_as_interrupted_and_can_resume(fake_run, fake_jobs):
    fake_run.run.write_status(state="running", pid=2**22 + 12345, stage="pretrain", updated_at=now_iso())
    at = open_page("train", run_id=fake_run.run_id)  # no process holds the run's lock: its worker is gone
    assert any("was interrupted" in w.value for w in at.warning)
    assert RunDir(fake_run.run.path).read_status()["state"] == "running"  # readers never write status.json
    at.button(key="train_progress_resume").click().run()
    assert fake_jobs.names() == ["resume"]


def test_past_runs_table_and_comparison(fake_run, fake_jobs):
    other = write_fake_run(workspace.runs_root(), "2026-11-27T11-00-00_othr", loss="ce", with_metrics=False)
    at = open_page("train", run_id=fake_run.run_id)
    table = at.dataframe[0].value
    assert table["run"].tolist() == [other.run_id, fake_run.run_id]
    assert table["loss"].tolist() == ["ce", "elr"]
    assert table["flagged"].tolist() == [9, 9]
    assert table["F1"].iloc[1] == 0.8
    diff = at.dataframe[1].value
    assert diff.set_index("setting").loc["classify.loss"].tolist() == ["ce", "elr"]
    assert len(at.get("plotly_chart")) == 2  # this run's curves + the comparison


def test_every_page_tells_what_is_next(fake_run, fake_jobs):
    for name in ("data", "train", "inspect", "review", "finetune", "export"):
        at = open_page(name, run_id=fake_run.run_id)
        assert not at.exception, name
        assert any(link.proto.label.startswith("Next:") for link in at.get("page_link")), name
