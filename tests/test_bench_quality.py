"""bench/quality.py: the detector comparison runs end to end on tiny data, and its pieces compute what they say."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import quality
from bench import quality_baselines as qb
from bench import quality_clean as qc
from bench import quality_methods as qm
from bench import quality_report as report
from bench.digits import make_digits
from bench.quality_data import Case, make_cases, parse_grid
from engine.config import RunConfig, with_overrides
from engine.data.noise import CIFAR10_CLASSES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# One epoch of everything at 16 px: seconds, yet every stage and method runs.
TINY = ["--pretrain-epochs", "1", "--epochs", "1", "--folds", "2", "--image-size", "16", "--quiet",
        "--set", "classify.warmup_epochs=1", "--set", "finetune.epochs=1", "--set", "finetune.head_epochs=1",
        "--set", "finetune.full_epochs=1"]


@pytest.fixture
def one_thread():
    """Tiny tensors gain nothing from a second thread, and on a shared machine busy-waiting OpenMP threads
    slow every step by an order of magnitude."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _table_rows(md: str) -> dict[str, list[str]]:
    """method -> cells of the first results table of a markdown file."""
    rows = {}
    for line in md.splitlines():
        if line.startswith("| ") and not line.startswith("| method") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows.setdefault(cells[0], cells[1:])
    return rows


@pytest.mark.slow
def test_smoke_every_method_gets_a_scored_row(tmp_path, one_thread, capsys):
    train = make_digits(tmp_path / "train", n=100, size=16, rate=0.4, test_out=tmp_path / "test", n_test=30)
    results = tmp_path / "results"
    rc = quality.main(["--case", "folder", "--data", str(train), "--test", str(tmp_path / "test"), "--results",
                       str(results), "--work", str(tmp_path / "work"), *TINY])
    assert rc == 0, capsys.readouterr().err
    md = (results / "quality_train.md").read_text()
    rows = _table_rows(md)
    expected = ["CLeaN default (ELR), after (a)", "CLeaN default (ELR), after (b)", "CLeaN, CE loss, after (a)",
                "CLeaN, NFL+RCE loss, after (a)", "no pre-training (ELR), after (a)", "cleanlab, CV (2-fold)",
                "kNN vote, SimCLR (k=10)"]
    assert list(rows) == expected
    for method, cells in rows.items():
        precision, recall, f1, auroc = (float(c) for c in cells[:4])  # "–" (failed) would raise here
        assert 0 <= precision <= 1 and 0 <= recall <= 1 and 0 <= auroc <= 1, method
        assert f1 == pytest.approx(2 * precision * recall / max(precision + recall, 1e-12), abs=2e-3), method
        assert 0 <= float(cells[6]) <= 1, f"{method}: test accuracy {cells[6]}"
        assert float(cells[7]) >= 0 and float(cells[8]) >= 0, f"{method}: times {cells[7:9]}"
    assert "python -m engine fit" in md and "--finetune" in md and "Target" in md
    assert re.search(r"budget: B = \(2 x 1 \+ 1\) x 100 = 300 image passes; cleanlab 2 folds x 3 epochs", md)
    result = json.loads((results / "quality_train.json").read_text())
    assert result["n"] == 100 and result["n_mislabeled"] == 40 and result["n_test"] == 30
    assert len(result["target"]) == 2  # CLeaN after (a) and after (b) against cleanlab
    for row in result["rows"]:
        assert row["seconds"] >= 0 and row["wall_seconds"] > 0, row["method"]  # sub-second runs round to 0.0
    for name in ("quality_train.png", "quality.png"):
        assert (results / name).read_bytes()[:8] == PNG_SIGNATURE
    assert "## train" in (results / "quality.md").read_text()


@pytest.mark.slow
def test_gpu_dry_run_writes_the_table1_report(tmp_path, one_thread, capsys, make_image_folder):
    clean = make_image_folder(tmp_path / "c10", classes=CIFAR10_CLASSES, per_class=5, size=16)
    test = make_image_folder(tmp_path / "c10-test", classes=CIFAR10_CLASSES, per_class=2, size=16)
    rc = quality.main(["--gpu", "--dry-run", "--case", "clean-folder", "--data", str(clean), "--test", str(test),
                       "--results", str(tmp_path / "results"), "--work", str(tmp_path / "work"),
                       "--data-root", str(tmp_path / "generated"), "--quiet"])
    assert rc == 0, capsys.readouterr().err
    md = (tmp_path / "results" / "gpu_quality.md").read_text()
    assert "CPU DRY RUN" in md and "UMAP map left out" in md
    for noise, paper in (("symmetric 40%", "92.0"), ("symmetric 80%", "84.8"), ("asymmetric 40%", "89.5")):
        line = next(x for x in md.splitlines() if x.startswith(f"| {noise} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == paper and 0 <= float(cells[1]) <= 100 and 0 <= float(cells[5]) <= 1, line
    runs = json.loads((tmp_path / "results" / "gpu_quality.json").read_text())
    assert [r["case"]["name"] for r in runs] == ["c10-sym40", "c10-sym80", "c10-asy40"]
    notes = [r["rows"][0]["note"] for r in runs]
    assert notes[0] == "" and all("shared pre-training" in n for n in notes[1:])  # SimCLR ran once
    assert all(r["settings"]["finetune_epochs"] == 0 for r in runs)
    assert len(list((tmp_path / "generated").glob("c10-*-seed0"))) == 3  # noisy copies by engine noise
    run = tmp_path / "work" / "c10-sym40" / "clean"
    assert (run / "samples.csv").is_file() and not (run / "umap.npy").exists()  # scored, map left out


# ------------------------------------------------------------------------------------------- the pieces


def test_budget_and_fold_epochs_follow_the_definition():
    cfg = RunConfig()  # CPU defaults: 12 pre-training epochs, 12 classifier epochs
    assert qm.training_budget(cfg, 5000) == (2 * 12 + 12) * 5000
    assert qm.fold_epochs(cfg, 3) == 18  # 36 N passes over K folds of (K-1)/K N images
    assert qm.fold_epochs(cfg, 2) == 36
    no_pretrain = with_overrides(cfg, {"pretrain.enabled": False})
    assert qm.training_budget(no_pretrain, 100) == 1200 and qm.fold_epochs(no_pretrain, 5) == 3
    with pytest.raises(ValueError, match="at least 2 folds"):
        qm.fold_epochs(cfg, 1)


def test_knn_vote_scores_agreement_and_keeps_the_given_label_on_ties():
    neighbours = np.array([[0, 0, 1, 1], [2, 2, 2, 0], [1, 1, 1, 1]])
    given = np.array([0, 0, 1])
    agreement, vote = qb.knn_vote(neighbours, given, num_classes=3)
    assert agreement.tolist() == [0.5, 0.25, 1.0]
    assert vote.tolist() == [0, 2, 1]  # row 0 ties 2:2 -> stays 0; row 1: class 2 outvotes the given 0


def test_run_timings_split_phases_and_leave_out_the_map():
    events = [{"kind": "stage", "stage": "prepare", "state": "done", "seconds": 1.0},
              {"kind": "stage", "stage": "pretrain", "state": "done", "seconds": 10.0},
              {"kind": "stage", "stage": "embed", "state": "done", "seconds": 4.0},
              {"kind": "summary", "phase": "fit", "seconds": 30.0, "test_acc": 0.5},
              {"kind": "stage", "stage": "embed", "state": "done", "seconds": 2.0},
              {"kind": "summary", "phase": "finetune", "seconds": 12.0, "test_acc": 0.6}]
    t = qc.run_timings(events)
    assert (t["prepare"], t["pretrain"], t["fit"], t["finetune"]) == (1.0, 10.0, 30.0, 12.0)
    assert (t["embed_fit"], t["embed_finetune"], t["test_fit"], t["test_finetune"]) == (4.0, 2.0, 0.5, 0.6)


def test_target_check_reports_the_margins():
    def row(key: str, f1: float, seconds: float) -> dict:
        return {"method": key, "key": key, "metrics": {"f1": f1}, "seconds": seconds, "error": None}

    checks = report.target_check([row("clean", 0.80, 100.0), row("cleanlab", 0.70, 120.0)])
    assert checks == [{"row": "clean", "f1": 0.8, "cleanlab_f1": 0.7, "f1_gap": 0.05, "seconds": 100.0,
                       "cleanlab_seconds": 120.0, "time_gap_s": -20.0, "met": True}]
    slow = report.target_check([row("clean", 0.72, 150.0), row("cleanlab", 0.70, 120.0)])[0]
    assert not slow["met"] and slow["f1_gap"] == pytest.approx(-0.03) and slow["time_gap_s"] == 30.0
    assert "F1 short by 0.030, 30 s slower (1.25x)" in "\n".join(report._target_lines([slow]))


def test_cases_and_grid():
    assert parse_grid("paper", "symmetric", 0.4) == [("symmetric", 0.2), ("symmetric", 0.4), ("symmetric", 0.6),
                                                     ("symmetric", 0.8), ("asymmetric", 0.2), ("asymmetric", 0.4)]
    assert parse_grid(None, "asymmetric", 0.3) == [("asymmetric", 0.3)]
    with pytest.raises(ValueError, match="is not KIND:RATE"):
        parse_grid("symmetric", "symmetric", 0.4)
    with pytest.raises(ValueError, match="noise rate must be in"):
        parse_grid("symmetric:1.5", "symmetric", 0.4)
    cases = make_cases(["cifar10", "sample"], [("symmetric", 0.4), ("asymmetric", 0.2)], n_per_class=None,
                       test_per_class=None, data=None, test=None, mapping=None)
    assert [c.name for c in cases] == ["cifar10-n5000-sym40", "cifar10-n5000-asy20", "sample"]
    assert cases[0].images == cases[1].images != cases[2].images  # noise settings share the image set
    assert Case("imagenette25").name == "imagenette25"
    with pytest.raises(ValueError, match="needs --data DIR"):
        make_cases(["folder"], [], n_per_class=None, test_per_class=None, data=None, test=None, mapping=None)


def test_aggregate_quotes_the_hand_written_findings(tmp_path):
    row = {"method": "CLeaN default (ELR), after (a)", "key": "clean", "metrics": {"f1": 0.5}, "seconds": 3.0,
           "wall_seconds": 4.0, "note": "", "command": "python -m engine fit x", "error": None, "test_acc": None}
    case = {"case": {"name": "c", "title": "t"}, "n": 10, "settings": {"device": "cpu"},
            "machine": {"gpu": None, "cpu": "cpu"}, "date": "d", "command": "python bench/quality.py", "rows": [row]}
    (tmp_path / "quality_c.json").write_text(json.dumps(case))
    report.write_aggregate(tmp_path)
    assert "Findings" not in (tmp_path / "quality.md").read_text()
    (tmp_path / report.FINDINGS).write_text("## Findings\n\n- the cause of the shortfall\n")
    report.write_aggregate(tmp_path)
    md = (tmp_path / "quality.md").read_text()
    assert "- the cause of the shortfall" in md and md.index("## Findings") < md.index("Definitions")
    assert "| 3.0 | 4.0 |" in md  # sub-10-second times keep a decimal


def test_bad_flags_fail_with_a_clear_message(capsys):
    assert quality.main(["--case", "mnist"]) == 2
    assert "unknown case 'mnist'" in capsys.readouterr().err
    assert quality.main(["--methods", "knn,cleanlab"]) == 2
    assert "add clean to --methods" in capsys.readouterr().err
    assert quality.main(["--dry-run"]) == 2
    assert "--dry-run goes with --gpu" in capsys.readouterr().err
    assert quality.main(["--folds", "1", "--case", "sample"]) == 2
    assert "--folds must be >= 2" in capsys.readouterr().err


def test_gpu_preset_fills_only_what_was_left_out():
    args = quality.apply_presets(quality.build_parser().parse_args(["--gpu", "--pretrain-epochs", "50"]))
    assert (args.case, args.methods, args.device, args.n_per_class, args.test_per_class) == (
        "cifar10", "clean", "cuda", 5000, 1000)
    assert args.pretrain_epochs == 50 and args.epochs == quality.GPU_PRESET["epochs"] and args.no_finetune
    assert parse_grid(args.grid, args.noise, args.rate) == [("symmetric", 0.4), ("symmetric", 0.8),
                                                            ("asymmetric", 0.4)]
    dry = quality.apply_presets(quality.build_parser().parse_args(["--gpu", "--dry-run"]))
    assert (dry.device, dry.n_per_class, dry.deadline_s) == ("cpu", 20, None)
    assert Path(dry.results) == Path(dry.work) / "results"  # a rehearsal never overwrites bench/results
