"""bench/quality.py: the detector comparison runs end to end on tiny data, and its pieces compute what they say."""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from bench import quality
from bench import quality_baselines as qb
from bench import quality_clean as qc
from bench import quality_cnn as cnn
from bench import quality_data as qd
from bench import quality_labels as ql
from bench import quality_methods as qm
from bench import quality_real as real
from bench import quality_report as report
from bench.digits import make_digits
from bench.quality_data import Case, make_cases, parse_grid
from engine.config import RunConfig, with_overrides
from engine.data.noise import CIFAR10_CLASSES

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# One epoch of everything at 16 px: seconds, yet every stage and method runs.
TINY = ["--pretrain-epochs", "1", "--epochs", "1", "--folds", "2", "--cnn-epochs", "1", "--image-size", "16", "--quiet",
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
                "cleanlab, small CNN, CV (2-fold)", "kNN vote, SimCLR (k=10)"]
    assert list(rows) == expected
    for method, cells in rows.items():
        precision, recall, f1, auroc = (float(c) for c in cells[:4])  # "–" (failed) would raise here
        assert 0 <= precision <= 1 and 0 <= recall <= 1 and 0 <= auroc <= 1, method
        assert f1 == pytest.approx(2 * precision * recall / max(precision + recall, 1e-12), abs=2e-3), method
        assert re.fullmatch(r"60\.0 % → \d+\.\d %", cells[7]), f"{method}: labels right {cells[7]}"  # 40 % wrong
        assert 0 <= float(cells[11]) <= 1, f"{method}: test accuracy {cells[11]}"
        assert float(cells[12]) >= 0 and float(cells[13]) >= 0, f"{method}: times {cells[12:14]}"
    assert "python -m engine fit" in md and "--finetune" in md and "Targets" in md and "never worse" in md
    assert re.search(r"budget: B = \(2 x 1 \+ 1\) x 100 = 300 image passes; cleanlab 2 folds x 3 epochs", md)
    assert "cleanlab-cnn 2 folds x 1 epochs of the small CNN = 100 passes" in md
    result = json.loads((results / "quality_train.json").read_text())
    assert result["n"] == 100 and result["n_mislabeled"] == 40 and result["n_test"] == 30
    assert [c["baseline"] for c in result["target"]] == ["cleanlab-cnn"] * 2  # CLeaN (a) and (b) vs the user's
    assert len(result["never_worse"]) == 2
    for row in result["rows"]:
        assert row["seconds"] >= 0 and row["wall_seconds"] > 0, row["method"]  # sub-second runs round to 0.0
        e = row["export"]
        assert e["n"] == 100 and e["n_wrong"] == 40 and e["n_flagged"] == row["metrics"]["n_flagged"], row["method"]
        # Two independent computations of the exported labels' accuracy: the engine's and the export file's.
        assert e["exported_right"] == pytest.approx(row["metrics"]["corrected_accuracy"], abs=1e-4), row["method"]
    exported = [r["export"]["file"] for r in result["rows"] if r["key"] == "clean"]
    assert [Path(f).name for f in exported] == ["clean-a.csv", "clean-b.csv"]
    assert all(Path(f).is_file() for f in exported)
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
    from engine.runs.rundir import RunDir

    for name, trained in (("c10-sym40", True), ("c10-sym80", False), ("c10-asy40", False)):
        events = RunDir(tmp_path / "work" / name / "clean").read_events()
        assert any(e.get("kind") == "epoch" and e.get("stage") == "pretrain" for e in events) == trained, name
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


def _row(key: str, f1: float, seconds: float, auroc: float = 0.8, n_mislabeled: int = 10) -> dict:
    return {"method": key, "key": key, "metrics": {"f1": f1, "auroc": auroc, "n_mislabeled": n_mislabeled},
            "seconds": seconds, "error": None}


def test_target_check_against_cleanlab_reports_the_margins():
    checks = report.target_check([_row("clean", 0.80, 100.0), _row("cleanlab", 0.70, 120.0)])
    assert checks == [{"row": "clean", "baseline": "cleanlab", "f1": 0.8, "baseline_f1": 0.7, "f1_gap": 0.05,
                       "auroc": None, "baseline_auroc": None, "auroc_gap": None, "seconds": 100.0,
                       "baseline_seconds": 120.0, "time_limit_s": 120.0, "time_gap_s": -20.0, "met": True}]
    slow = report.target_check([_row("clean", 0.72, 150.0), _row("cleanlab", 0.70, 120.0)])[0]
    assert not slow["met"] and slow["f1_gap"] == pytest.approx(-0.03) and slow["time_gap_s"] == 30.0
    assert "F1 short by 0.030, 30 s slower (1.25x)" in "\n".join(report._target_lines([slow]))


def test_target_check_against_the_users_baseline_needs_f1_auroc_and_ten_minutes():
    rows = [_row("clean", 0.80, 590.0, auroc=0.90), _row("cleanlab", 0.79, 100.0), _row("cleanlab-cnn", 0.70, 60.0,
                                                                                        auroc=0.85)]
    (met,) = report.target_check(rows)  # cleanlab-cnn counts, not the faster cleanlab row
    assert met["baseline"] == "cleanlab-cnn" and met["met"]
    assert met["f1_gap"] == pytest.approx(0.0) and met["auroc_gap"] == pytest.approx(0.0)
    assert met["time_gap_s"] == -10.0  # against the 600 s limit, not against the baseline's 60 s
    rows[0] = _row("clean", 0.85, 601.0, auroc=0.89)
    (short,) = report.target_check(rows)
    assert not short["met"] and short["auroc_gap"] == pytest.approx(-0.01)
    assert "AUROC short by 0.010, 1 s over 600 s" in report._target_lines([short])[0]
    clean_data = [_row("clean", 0.0, 10.0, n_mislabeled=0), _row("cleanlab-cnn", 0.0, 5.0, n_mislabeled=0)]
    assert report.target_check(clean_data) == []  # nothing to detect: only "never worse" applies
    assert "no label is wrong in this case" in "\n".join(report.check_lines({"rows": clean_data}))


def test_never_worse_compares_exported_with_given_labels():
    def row(method: str, given: float, exported: float) -> dict:
        return {**_row("clean", 0.5, 1.0), "method": method,
                "export": {"given_right": given, "exported_right": exported, "gain_points": 100 * (exported - given),
                           "auto_changed": 3, "auto_precision": 0.5}}

    checks = report.never_worse([row("a", 0.6, 0.631), row("b", 1.0, 0.99), row("c", 0.9, 0.9)])
    assert [c["met"] for c in checks] == [True, False, True]  # equal is not worse
    lines = report._never_worse_lines(checks)
    assert "exported labels 63.1 % right vs given 60.0 % (margin +3.1 points; 3 auto-changed, 50.0 % of them " \
           "right) -> **met**" in lines[0]
    assert lines[1].endswith("**not met**")


# ------------------------------------------------------------------------------------ exported labels


def test_label_scores_on_a_hand_made_example():
    o = np.array
    given = o(["a", "a", "a", "a", "b", "b", "b", "b", "b", "c"], dtype=object)
    true = o(["a", "a", "b", "b", "b", "b", "b", "a", None, "c"], dtype=object)  # row 8 has no truth: left out
    flagged = o([0, 1, 1, 0, 1, 1, 0, 1, 1, 0], dtype=bool)
    exported = o(["a", "b", "b", "a", "b", "a", "b", "a", "a", "c"], dtype=object)
    decided = o([0, 0, 0, 0, 0, 1, 0, 0, 0, 0], dtype=bool)  # row 5: a person relabeled it (wrongly)
    s = ql.label_scores(given=given, true=true, exported=exported, flagged=flagged, decided=decided)
    # 9 known; wrong: rows 2, 3, 7 -> given right 6/9; exported right: rows 0, 2, 4, 6, 7, 9 -> 6/9
    assert (s["n"], s["n_wrong"], s["n_flagged"]) == (9, 3, 5)
    assert s["given_right"] == pytest.approx(6 / 9, abs=1e-4) and s["exported_right"] == pytest.approx(6 / 9, abs=1e-4)
    assert s["gain_points"] == 0.0 and s["flag_ratio"] == pytest.approx(5 / 3, abs=1e-4)
    # class a: flagged 2/4, wrong 2/4 -> 0; class b: flagged 3/4, wrong 1/4 -> 50 points; class c: 0
    assert s["class_error_max"] == 50.0 and s["class_error_mean"] == pytest.approx(50 / 3, abs=0.01)
    # auto-changed (exported != given, undecided): rows 1 (a->b, wrong), 2 (a->b, right), 7 (b->a, right)
    assert (s["auto_changed"], s["auto_changed_right"]) == (3, 2) and s["auto_precision"] == pytest.approx(2 / 3, 1e-3)
    none_wrong = ql.label_scores(given=given[:2], true=given[:2], exported=given[:2], flagged=flagged[:2])
    assert none_wrong["flag_ratio"] is None and none_wrong["auto_precision"] is None
    assert report.export_cells({"export": none_wrong})[:2] == ["1 / 0", "50.0 / 50.0"]
    assert report.export_cells({"export": s}) == ["1.67×", "50.0 / 16.7", "66.7 % → 66.7 %", "+0.0", "3", "66.7 %"]
    old = {"metrics": {"given_label_accuracy": 0.6, "corrected_accuracy": 0.631}}  # a row from before exports
    assert report.export_cells(old) == ["–", "–", "60.0 % → 63.1 %", "+3.1", "–", "–"]


def test_a_clean_run_is_scored_from_its_engine_export(tmp_path):
    """The export file decides: a flagged image whose suggestion equals its given label stays unchanged."""
    data = tmp_path / "data"
    data.mkdir()
    truth = data / "truth.csv"
    truth.write_text("path,true_label,given_label\na/1.png,a,a\na/2.png,b,a\nb/3.png,b,b\nb/4.png,b,b\n")
    run = tmp_path / "run"
    run.mkdir()
    (run / "source.json").write_text(json.dumps({"data": str(data), "root": str(data), "classes": ["a", "b"]}))
    with open(run / "samples.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "given_label", "suggested_label", "clean_prob", "flagged", "auto_relabel"])
        w.writerows([["a/1.png", "a", "b", 0.2, 1, 1], ["a/2.png", "a", "b", 0.1, 1, 1], ["b/3.png", "b", "b", 0.3, 1, 0],
                     ["b/4.png", "b", "a", 0.9, 0, 0]])
    scores = qc.export_and_score(run, tmp_path / "out" / "labels.csv", qd.CaseData(data, truth, None))
    assert scores["command"] == f"python -m engine export {run} --out {tmp_path / 'out' / 'labels.csv'} --format csv"
    assert (scores["n_flagged"], scores["auto_changed"], scores["auto_changed_right"]) == (3, 2, 1)
    assert (scores["given_right"], scores["exported_right"], scores["gain_points"]) == (0.75, 0.75, 0.0)
    view = ql.phase_a_view(_with_phase_a(run), tmp_path / "view")
    assert qc.export_and_score(view, tmp_path / "out" / "a.csv", qd.CaseData(data, truth, None))["auto_changed"] == 0


def _with_phase_a(run: Path) -> Path:
    """Phase (a)'s snapshot of a run: here, nothing flagged."""
    text = (run / "samples.csv").read_text().replace(",1\n", ",0\n")
    (run / "samples_phase_a.csv").write_text(text)
    return run


# ------------------------------------------------------------------------------------ the small CNN


def test_small_cnn_takes_cifar_and_imagenette_sizes_and_augments_per_image():
    net = cnn.small_cnn(10)
    for size in (32, 96):
        assert net(torch.zeros(2, 3, size, size)).shape == (2, 10)
    x = torch.arange(2 * 3 * 16 * 16, dtype=torch.float32).view(2, 3, 16, 16)
    a = cnn.augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, cnn.augment(x, torch.Generator().manual_seed(0)))
    assert not torch.equal(a, x)


@pytest.mark.slow  # seconds of training, and importing cleanlab alone takes seconds
def test_cleanlab_cnn_runs_at_toy_size(tmp_path, one_thread):
    train = make_digits(tmp_path / "train", n=60, size=16, rate=0.4, test_out=tmp_path / "test", n_test=20)
    cfg = qc.resolved_config(qc.fit_argv(qd.CaseData(train, train / "truth.csv", tmp_path / "test"), tmp_path / "r",
                                         qm.Settings(device="cpu"), 16))
    row = cnn.run_cleanlab_cnn(qd.CaseData(train, train / "truth.csv", tmp_path / "test"), tmp_path / "work", cfg,
                               qm.Settings(device="cpu", folds=2, cnn_epochs=1), say=lambda _: None)
    assert row.key == "cleanlab-cnn" and row.error is None and row.metrics["n"] == 60
    # symmetric noise moves floor(0.4 x 6) = 2 images of each of the 10 classes
    assert row.metrics["n_mislabeled"] == 20 and 0 <= row.metrics["auroc"] <= 1 and 0 <= row.test_acc <= 1
    assert row.export["n_flagged"] == row.metrics["n_flagged"]
    assert row.export["exported_right"] == pytest.approx(row.metrics["corrected_accuracy"], abs=1e-4)
    assert "2 folds x 1 epochs" in row.note and row.seconds <= row.wall_seconds


# ------------------------------------------------------------------------------------ real-data cases


CLASSES = ("airplane", "automobile", "bird")


def _fake_shared(folder: Path, *, n: int = 36, dev: int = 30) -> Path:
    """The two npz files of ../shared/data in their layout, tiny: n train rows, CIFAR-10N labels for the
    first `dev`; each image's red channel is its row number, so a test can tell images apart."""
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(0)
    label = np.arange(n) % len(CLASSES)
    blobs = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (i * 7 % 256, 0, 0)).save(buf, format="JPEG", quality=95)
        blobs.append(np.frombuffer(buf.getvalue(), np.uint8))
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype(np.int64)
    np.savez(folder / real.TRAIN_NPZ, jpeg=np.concatenate(blobs), offsets=offsets, label=label.astype(np.uint8),
             classes=np.array(CLASSES))
    clean = label[:dev].astype(np.uint8)

    def noisy(rate: float) -> np.ndarray:
        flip = rng.random(dev) < rate
        return np.where(flip, (clean + 1) % len(CLASSES), clean).astype(np.uint8)

    np.savez(folder / real.HUMAN_NPZ, clean_label=clean, worse_label=noisy(0.5), aggre_label=noisy(0.1),
             random_label1=noisy(0.2))
    (folder / "to_folder.py").write_text("")  # shared_data_dir looks for it; the test split is faked below
    return folder


def _truth_rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "truth.csv", newline="") as f:
        return list(csv.DictReader(f))


def _row_of(path: str) -> int:
    return int(re.search(r"_(\d{5})\.png$", path).group(1))


def test_cifar10n_cases_take_first_or_last_rows_with_the_human_labels(tmp_path, monkeypatch):
    shared = _fake_shared(tmp_path / "shared")
    monkeypatch.setattr(qd, "_to_folder", lambda shared, args, per_class, out: out.mkdir(parents=True))
    human = np.load(shared / real.HUMAN_NPZ)
    seen = {}
    for rows in ("first", "last"):
        (case,) = make_cases(["cifar10n-worst"], [], n_per_class=3, test_per_class=1, data=None, test=None,
                             mapping=None, rows=rows)
        data = qd.materialise(case, root=tmp_path / "gen", seed=0, shared=shared)
        truth = _truth_rows(data.train)
        picked = [_row_of(r["path"]) for r in truth]
        assert len(picked) == 9 and all(i < 30 for i in picked)  # rows with CIFAR-10N labels only
        assert sorted(human["clean_label"][picked].tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]  # 3 per true class
        for r, i in zip(truth, picked, strict=True):
            assert r["true_label"] == CLASSES[human["clean_label"][i]]
            assert r["given_label"] == CLASSES[human["worse_label"][i]]
            assert Path(r["path"]).parts[0] == r["given_label"] and (data.train / r["path"]).is_file()
        wrong = np.mean([r["true_label"] != r["given_label"] for r in truth])
        assert wrong == pytest.approx(np.mean(human["worse_label"][picked] != human["clean_label"][picked]))
        seen[rows] = set(picked)
    assert not seen["first"] & seen["last"]  # a result can be checked on images it was not tuned on
    assert seen["first"] == {0, 1, 2, 3, 4, 5, 6, 7, 8} and seen["last"] == set(range(21, 30))


def test_the_clean_case_has_no_wrong_label_and_shares_the_image_set(tmp_path, monkeypatch):
    shared = _fake_shared(tmp_path / "shared")
    monkeypatch.setattr(qd, "_to_folder", lambda shared, args, per_class, out: out.mkdir(parents=True))
    clean, worst = make_cases(["cifar10-clean", "cifar10n-worst"], [], n_per_class=2, test_per_class=1, data=None,
                              test=None, mapping=None)
    truth = _truth_rows(qd.materialise(clean, root=tmp_path / "gen", seed=0, shared=shared).train)
    assert len(truth) == 6 and all(r["true_label"] == r["given_label"] for r in truth)
    assert {_row_of(r["path"]) for r in truth} == {_row_of(r["path"]) for r in _truth_rows(
        qd.materialise(worst, root=tmp_path / "gen", seed=0, shared=shared).train)}
    assert clean.images == worst.images  # so SimCLR (label-free) pre-trains once for both


def test_select_rows_refuses_a_short_class():
    true = np.array([0, 1, 0, 1, 0])
    assert real.select_rows(true, 2, "first").tolist() == [0, 1, 2, 3]
    assert real.select_rows(true, 2, "last").tolist() == [1, 2, 3, 4]
    assert real.select_rows(true, None, "last").tolist() == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="class 1 has only 2 images"):
        real.select_rows(true, 3, "first")


def test_presets_and_defaults_of_the_real_cases():
    cases = make_cases(["real"], [("asymmetric", 0.2)], n_per_class=None, test_per_class=None, data=None, test=None,
                       mapping=None)
    assert [c.name for c in cases] == ["cifar10n-worst-n5000", "cifar10n-aggre-n5000", "cifar10n-random1-n5000",
                                       "imagenette25-200pc", "imagenette5-200pc", "cifar10-clean-n5000"]
    assert [(c.n_per_class, c.test_per_class) for c in cases][2:4] == [(500, 100), (200, 50)]
    every = make_cases(["all-real", "cifar10n-worst"], [("asymmetric", 0.2)], n_per_class=None, test_per_class=None,
                       data=None, test=None, mapping=None, rows="last")
    assert [c.name for c in every][6:] == ["imagenette1-200pc", "imagenette50-200pc", "cifar10-n5000-sym40"]
    assert len(every) == 9 and every[0].name == "cifar10n-worst-n5000-last"  # named twice, run once
    with pytest.raises(ValueError, match="--rows must be one of first, last"):
        make_cases(["real"], [], n_per_class=None, test_per_class=None, data=None, test=None, mapping=None,
                   rows="middle")


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
    assert quality.main(["--cnn-epochs", "0", "--case", "sample"]) == 2
    assert "--cnn-epochs >= 1" in capsys.readouterr().err


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
