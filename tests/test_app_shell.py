"""The app around the pages: navigation, the run picker and the URL, and no torch in the UI process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

from fixtures_runs import REPO, open_page, write_fake_run

from ui import datasets, workspace


def test_navigation_lists_the_six_steps_in_order():
    source = (REPO / "app.py").read_text()
    assert "st.navigation(" in source and "st.Page(" in source
    from ui.page import PAGES

    assert [title for _, title, _ in PAGES.values()] == ["Data", "Train", "Inspect", "Review", "Fine-tune", "Export"]
    assert all((REPO / path).is_file() for path, _, _ in PAGES.values())
    assert sorted(p.name for p in (REPO / "pages").glob("*.py")) == sorted(Path(p).name for p, _, _ in PAGES.values())


def test_sidebar_picker_switches_the_run_in_the_url(fake_run, fake_jobs):
    other = write_fake_run(workspace.runs_root(), "2026-11-27T12-00-00_newr")
    at = open_page("inspect", run_id=fake_run.run_id)
    picker = at.sidebar.selectbox(key="_run_picker")
    assert picker.options == [f"{other.run_id} · {other.data.name}", f"{fake_run.run_id} · {fake_run.data.name}"]
    assert picker.value == fake_run.run_id
    picker.select(other.run_id).run()
    assert at.query_params["run"] == other.run_id
    assert at.session_state["run"] == other.run_id


def test_unknown_or_malformed_run_ids_fall_back_to_the_newest_run(fake_run, fake_jobs):
    for bad in ("../../etc", "2020-01-01T00-00-00_gone"):
        at = open_page("inspect", run_id=bad)
        assert not at.exception
        assert at.query_params["run"] == fake_run.run_id


def test_an_empty_workspace_guides_to_data_and_train(app_workspace, fake_jobs):
    for name in ("inspect", "review", "finetune", "export"):
        at = open_page(name)
        assert any("No run selected — start one on Train." == i.value for i in at.info), name
        assert any(link.proto.label == "Go to Train" for link in at.get("page_link")), name
    at = open_page("train")
    assert any("No runs yet" in c.value for c in at.sidebar.caption)


def test_the_ui_process_never_imports_torch(fake_run, tmp_path):
    """Every page, run in a fresh interpreter with AppTest, leaves torch (and the training code) unimported."""
    script = textwrap.dedent(f"""
        import json, os, sys
        sys.path[:0] = [{str(REPO)!r}, {str(REPO / "tests")!r}]
        os.environ["CLEAN_WORKSPACE"] = {str(fake_run.run.path.parent.parent)!r}
        from streamlit.testing.v1 import AppTest
        from engine.runs import jobs
        jobs.detect_devices = lambda *a, **k: {{"cuda": False, "devices": [], "default": "cpu"}}
        from fixtures_runs import open_page
        errors = []
        for name in ("data", "train", "inspect", "review", "finetune", "export"):
            at = open_page(name, run_id={fake_run.run_id!r}, data={str(fake_run.data)!r})
            errors += [f"{{name}}: {{e.message}}" for e in at.exception]
        heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "umap", "sklearn"))
        print(json.dumps({{"errors": errors, "heavy": heavy}}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["errors"] == []
    assert result["heavy"] == []


# ----------------------------------------------------------------------------- the dataset follows the current run


def dataset_caption(at) -> str:
    return next(c.value for c in at.caption if c.value.startswith("Dataset: "))


def test_reopening_a_run_on_an_upload_offers_its_dataset_not_the_sample(fake_run, fake_jobs):
    at = open_page("train", run_id=fake_run.run_id)  # a new session from the URL ?run=<id>
    assert dataset_caption(at) == f"Dataset: `{fake_run.data}`"
    assert at.query_params["data"] == str(fake_run.data)
    data = open_page("data", run_id=fake_run.run_id)
    assert data.radio(key="data_choice").value == "A folder or .zip on this server"
    assert any(c.value == f"`{fake_run.data}`" for c in data.caption)  # the intake report of the run's data
    assert {m.label: m.value for m in data.metric}["Images"] == "30"


def test_from_export_to_data_and_train_the_dataset_stays_the_runs(fake_run, fake_jobs):
    at = open_page("export", run_id=fake_run.run_id)
    at.switch_page("pages/1_data.py").run()
    assert any(c.value == f"`{fake_run.data}`" for c in at.caption)
    at.switch_page("pages/2_train.py").run()
    assert dataset_caption(at) == f"Dataset: `{fake_run.data}`"


def test_the_dataset_follows_the_run_picked_in_the_sidebar(fake_run, fake_jobs):
    on_sample = write_fake_run(workspace.runs_root(), "2026-11-27T12-00-00_smpl", data=workspace.SAMPLE_DATA)
    at = open_page("train", run_id=on_sample.run_id)
    assert dataset_caption(at) == f"Dataset: `{workspace.SAMPLE_DATA}`"
    at.sidebar.selectbox(key="_run_picker").select(fake_run.run_id).run()
    assert dataset_caption(at) == f"Dataset: `{fake_run.data}`"


def test_a_dataset_chosen_on_data_stays_while_the_run_does(fake_run, fake_jobs, tmp_path):
    at = open_page("data", run_id=fake_run.run_id)
    at.radio(key="data_choice").set_value(datasets.SAMPLE_LABEL).run()
    assert at.query_params["data"] == str(workspace.SAMPLE_DATA)
    at.switch_page("pages/2_train.py").run()
    assert dataset_caption(at) == f"Dataset: `{workspace.SAMPLE_DATA}`"  # chosen after the run was opened


def test_make_run_honours_the_port_variable_and_port_on_the_command_line():
    def dry_run(*args: str, **env: str) -> str:
        out = subprocess.run(["make", "-n", "run", *args], cwd=REPO, capture_output=True, text=True, timeout=60,
                             env={k: v for k, v in {**os.environ, **env}.items() if k != "PORT"})
        assert out.returncode == 0, out.stderr
        return next(line for line in out.stdout.splitlines() if "streamlit run app.py" in line)

    assert dry_run().endswith("--server.port 8501")
    assert dry_run(STREAMLIT_SERVER_PORT="8765").endswith("--server.port 8765")
    assert dry_run("PORT=9000").endswith("--server.port 9000")
    assert dry_run("PORT=9000", STREAMLIT_SERVER_PORT="8765").endswith("--server.port 9000")
