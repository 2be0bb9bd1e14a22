"""bench/gpu_check.py: the dry run takes every step of the GPU check at toy size on the CPU and writes the report."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from bench import gpu_check

# A stand-in for ../shared/data/to_folder.py with the same command line: tests never read /work/shared.
FAKE_TO_FOLDER = textwrap.dedent('''
    import argparse, csv
    from pathlib import Path
    import numpy as np
    from PIL import Image

    CLASSES = "airplane automobile bird cat deer dog frog horse ship truck".split()
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--split", default="train")
    ap.add_argument("--per-class", type=int, default=8)
    ap.add_argument("--human", default=None)
    ap.add_argument("--noisy", default=None)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    rng = np.random.default_rng(0 if a.split == "train" else 1)
    a.out.mkdir(parents=True)
    with open(a.out / "truth.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "true_label", "given_label"])
        for c, name in enumerate(CLASSES):
            for j in range(a.per_class):
                given = CLASSES[(c + 1) % 10] if a.human and j % 3 == 0 else name
                rel = Path(given) / f"{a.name}_{a.split}_{c:02d}{j:03d}.png"
                (a.out / given).mkdir(exist_ok=True)
                pixels = (rng.integers(0, 60, (32, 32, 3)) + 19 * c).astype(np.uint8)
                Image.fromarray(pixels).save(a.out / rel)
                w.writerow([rel.as_posix(), name, given])
''')


@pytest.fixture
def fake_shared(tmp_path: Path) -> Path:
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "to_folder.py").write_text(FAKE_TO_FOLDER)
    return shared


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_the_report(tmp_path, fake_shared, capsys, monkeypatch):
    monkeypatch.delenv("OUT", raising=False)
    work = tmp_path / "work"
    assert gpu_check.main(["--dry-run", "--shared-data", str(fake_shared), "--work", str(work)]) == 0, \
        capsys.readouterr().out
    report = (work / "results" / "gpu_check_cpu-dry-run.md").read_text()
    assert report.startswith("# GPU check (CPU DRY RUN")
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ") for line in report.splitlines()
            if line.startswith("| ") and not line.startswith("| step") and " | " in line}
    for step in gpu_check.STEPS:
        assert rows[step][1] == "passed", (step, rows[step])
    assert "4 skipped" in rows["tests"][3]  # no CUDA here: the GPU tests skip themselves
    assert "x the best DataLoader + PIL loop" in rows["throughput"][3]
    assert "symmetric 40%" in rows["table1"][3] and "asymmetric 40%" in rows["table1"][3]
    assert "worst AUROC" in rows["cifar10n"][3]
    for section in ("## preflight", "## throughput", "## table1", "## cifar10n"):
        assert section in report
    assert "| worst | 60 |" in report and "reused the worst run’s pre-training" in report  # 6 per class, 10 classes
    state = json.loads((work / "state.json").read_text())
    assert sorted(state["steps"]) == sorted(gpu_check.STEPS) and state["card"] == "cpu-dry-run"
    assert (work / "runs" / "c10n-aggre" / "metrics.json").is_file()


def test_a_split_check_adds_to_one_report(tmp_path, fake_shared, monkeypatch):
    """--only runs some steps; the report keeps the results of the earlier invocations."""
    calls: list[str] = []

    def fake(name):
        def run(c):
            calls.append(name)
            if name == "preflight":
                c.card = "NVIDIA Test Card"
            return gpu_check.StepResult(name, "passed", summary=f"{name} ok")
        return run

    monkeypatch.setattr(gpu_check, "RUNNERS", {name: fake(name) for name in gpu_check.STEPS})
    monkeypatch.setattr(gpu_check.Check, "start_background_data", lambda self: None)
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.setenv("OUT", str(out))
    common = ["--shared-data", str(fake_shared), "--work", str(tmp_path / "w"), "--results", str(tmp_path / "r")]
    assert gpu_check.main(["--only", "preflight,tests", *common]) == 0
    report = (tmp_path / "r" / "gpu_check_nvidia-test-card.md").read_text()
    assert "| tests | passed |" in report and "| cifar10n | not run |" in report
    assert gpu_check.main(["--only", "cifar10n", *common]) == 0
    report = (tmp_path / "r" / "gpu_check_nvidia-test-card.md").read_text()
    assert "| tests | passed |" in report and "| cifar10n | passed |" in report and "# GPU check: NVIDIA Test Card" in report
    assert calls == ["preflight", "tests", "cifar10n"]
    assert (out / "gpu_check_nvidia-test-card.md").read_text() == report  # copied for the machine's $OUT
    assert gpu_check.main(["--only", "nope", *common]) == 2


def test_a_step_past_its_deadline_is_stopped_and_reported(tmp_path, fake_shared):
    args = gpu_check.build_args(["--dry-run", "--shared-data", str(fake_shared), "--work", str(tmp_path / "w")])
    c = gpu_check.Check(args)
    code, tail = c.command("sleepy", ["python3", "-c", "import time; print('started', flush=True); time.sleep(60)"], 1.0)
    assert code is None and "started" in tail
    assert gpu_check._state(code) == "timed out" and gpu_check._state(3) == "failed (exit 3)"


def test_missing_shared_data_is_one_sentence(tmp_path, capsys):
    assert gpu_check.main(["--shared-data", str(tmp_path / "nothing"), "--work", str(tmp_path / "w")]) == 2
    assert "to_folder.py not found" in capsys.readouterr().err
