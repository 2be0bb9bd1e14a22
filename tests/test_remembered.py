"""A new run starts with the workspace's remembered decisions (engine.review.remembered, the prepare stage),
unless `fit --no-memory`, which the run records and every later writer respects."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures_review import make_run, sha

from engine import config as config_mod
from engine.cli import build_parser
from engine.cli.run import fit_config
from engine.config import ConfigError, ReviewConfig, RunConfig
from engine.review import remembered
from engine.review.decisions import Decision, DecisionStore
from engine.review.hashes import read_hashes
from engine.review.memory import MEMORY_SOURCE, Memory, open_run_store, uses_memory

ROOT = Path(__file__).resolve().parents[1]
IMAGES = [("cat/1.png", "cat", "k1"), ("cat/2.png", "cat", "k2"), ("dog/3.png", "dog", "k3")]


def decide_in_first_run(base: Path) -> None:
    first = make_run(base, IMAGES, name="first")
    remembered.start_run(first.path, base / "first-data", [p for p, _, _ in IMAGES], ["cat", "cat", "dog"],
                         ["cat", "dog"], use_memory=True)
    store = open_run_store(first.path)
    store.decide(["cat/1.png"], "relabel", "dog", source="tab")
    store.decide(["dog/3.png"], "discard", source="tab")


def test_start_run_hashes_the_images_and_seeds_the_store(tmp_path: Path):
    decide_in_first_run(tmp_path)
    moved = [("kitten/a.png", "cat", "k1"), ("kitten/b.png", "cat", "k2"), ("puppy/c.png", "dog", "k3")]
    second = make_run(tmp_path, moved, name="second")
    notes: list[str] = []
    started = remembered.start_run(second.path, tmp_path / "second-data", [p for p, _, _ in moved],
                                   ["cat", "cat", "dog"], ["cat", "dog"], use_memory=True, note=notes.append)
    assert started == remembered.Started(hashed=3, seeded=2, problem=None)
    assert read_hashes(second.path) == {"kitten/a.png": sha("k1"), "kitten/b.png": sha("k2"), "puppy/c.png": sha("k3")}
    got = {p: (d.action, d.label, d.source) for p, d in DecisionStore(second.decisions).all().items()}
    assert got == {"kitten/a.png": ("relabel", "dog", MEMORY_SOURCE), "puppy/c.png": ("discard", None, MEMORY_SOURCE)}
    assert notes == ["started with 2 review decisions remembered for these images"]
    assert {"kind": "memory", "decisions": 2}.items() <= second.read_events()[-1].items()


def test_without_memory_a_run_is_hashed_but_starts_empty(tmp_path: Path):
    decide_in_first_run(tmp_path)
    run = make_run(tmp_path, IMAGES, name="opted-out")
    notes: list[str] = []
    started = remembered.start_run(run.path, tmp_path / "opted-out-data", [p for p, _, _ in IMAGES],
                                   ["cat", "cat", "dog"], ["cat", "dog"], use_memory=False, note=notes.append)
    assert started == remembered.Started(hashed=3, seeded=0, problem=None)
    assert not run.decisions.exists() and len(read_hashes(run.path)) == 3
    assert notes == ["not using the decisions remembered in the workspace (review.memory is off)"]


def test_a_foreign_memory_file_is_reported_and_the_run_goes_on(tmp_path: Path):
    Path(os.environ["CLEAN_WORKSPACE"]).mkdir(parents=True, exist_ok=True)
    (Path(os.environ["CLEAN_WORKSPACE"]) / "memory.sqlite").write_bytes(b"not a database, someone's file")
    run = make_run(tmp_path, IMAGES)
    notes: list[str] = []
    started = remembered.start_run(run.path, tmp_path / "run-data", [p for p, _, _ in IMAGES], ["cat", "cat", "dog"],
                                   ["cat", "dog"], use_memory=True, note=notes.append)
    assert started.seeded == 0 and "is not a CLeaN decision memory" in started.problem
    assert notes[0].startswith("starting without the workspace's remembered decisions: ")


def test_the_opt_out_is_in_the_config_and_stops_every_write_to_the_memory(tmp_path: Path):
    args = build_parser().parse_args(["fit", "data", "--run-dir", "r", "--no-memory", "--device", "cpu"])
    assert fit_config(args).review.memory is False
    assert fit_config(build_parser().parse_args(["fit", "data", "--run-dir", "r", "--device", "cpu"])).review == \
        ReviewConfig(memory=True, rerank_every=20)
    run = make_run(tmp_path, IMAGES)
    assert uses_memory(run.path)  # no config.json: the default
    config_mod.save(fit_config(args), run.config)
    assert not uses_memory(run.path)
    store = open_run_store(run.path)
    store.decide(["cat/1.png"], "keep", "cat", source="tab")
    assert store.mirror is None and Memory().entries() == []  # the run's decision, nobody else's
    assert store.get("cat/1.png").action == "keep"


def test_review_settings_are_validated():
    with pytest.raises(ConfigError, match="review.rerank_every must be >= 0"):
        config_mod.with_overrides(RunConfig(), {"review.rerank_every": -1})
    assert config_mod.with_overrides(RunConfig(), {"review.rerank_every": 0}).review.rerank_every == 0


def test_review_settings_do_not_change_what_phase_b_trains():
    from engine.train.pipeline import finetune_fingerprint

    decisions = {"a": Decision("a", "keep", "cat", "t")}
    other = config_mod.with_overrides(RunConfig(), {"review.memory": False, "review.rerank_every": 5})
    assert finetune_fingerprint(decisions, RunConfig()) == finetune_fingerprint(decisions, other)


def test_a_skip_is_no_decision_in_fine_tuning():
    from engine.config import SplitConfig
    from engine.train.finetune import finetune_targets

    probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.7, 0.3], [0.6, 0.4], [0.1, 0.9]], dtype=np.float32)
    paths, given = ("a", "b", "c", "d", "e"), np.array([0, 1, 0, 1, 1])
    relabel = {"b": Decision("b", "relabel", "cat", "t")}
    decisions = {"a": Decision("a", "skip", None, "t"), **relabel}
    t = finetune_targets(probs, paths, ("cat", "dog"), decisions, SplitConfig(), given=given, min_weight=0.01, seed=0)
    without = finetune_targets(probs, paths, ("cat", "dog"), relabel, SplitConfig(), given=given, min_weight=0.01,
                               seed=0)
    assert (t.n_decided, t.n_discarded) == (1, 0)
    assert t.labels.tolist() == [0, 0, 0, 0, 1] and t.weights[1] == 1.0 and t.keep.all()
    # The skipped image weighs what the mixture says, exactly as with no answer at all.
    assert t.weights[0] == without.weights[0] and t.weights.tolist() == without.weights.tolist()


def test_keep_trains_on_the_given_label_whatever_the_decision_stored():
    from engine.config import SplitConfig
    from engine.train.finetune import finetune_targets

    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.2, 0.8]], dtype=np.float32)  # the model says cat, cat, dog
    decisions = {"a": Decision("a", "keep", "cat", "t"),  # remembered from a run where the file was "cat"
                 "c": Decision("c", "discard", None, "t")}
    t = finetune_targets(probs, ("a", "b", "c"), ("cat", "dog"), decisions, SplitConfig(), given=np.array([1, 0, 1]),
                         min_weight=0.01, seed=0)
    assert t.labels.tolist()[:2] == [1, 0] and t.weights[0] == 1.0  # "a" is dog in this run: kept as dog
    assert t.keep.tolist() == [True, True, False] and (t.n_decided, t.n_discarded) == (1, 1)


# ----------------------------------------------------------------------------- end to end: fit twice


def engine(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "engine", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


TINY = ["--device", "cpu", "--no-pretrain", "--epochs", "1", "--batch-size", "8", "--image-size", "16",
        "--set", "embed.enabled=false", "--seed", "1"]


@pytest.mark.slow
def test_a_new_run_on_renamed_images_starts_with_the_decisions_and_exports_them(tmp_path: Path, pattern_folder):
    first = tmp_path / "first"
    r = engine("fit", pattern_folder, "--run-dir", first, *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "started with 0 review decisions remembered" in r.stderr
    s = pd.read_csv(first / "samples.csv", dtype=str, keep_default_na=False)
    assert np.load(first / "neighbours.npy").shape == (36, 5)
    kept, relabeled, dropped, unsure = s["path"].iloc[0], s["path"].iloc[1], s["path"].iloc[2], s["path"].iloc[3]
    other = next(c for c in ("checker", "horizontal", "vertical") if c != s["given_label"].iloc[1])
    store = open_run_store(first)
    store.decide([kept], "keep", s["given_label"].iloc[0], source="tab")
    store.decide([relabeled], "relabel", other, source="tab")
    store.decide([dropped], "discard", source="tab")
    store.decide([unsure], "skip", source="tab")

    moved = tmp_path / "moved"  # the same images under other names (a re-upload, renamed files)
    renamed = {}
    for path in sorted(pattern_folder.rglob("*.png")):
        rel = path.relative_to(pattern_folder).as_posix()
        new = f"{rel.split('/')[0]}/renamed_{path.stem}.png"
        (moved / new).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, moved / new)
        renamed[rel] = new
    second = tmp_path / "second"
    r = engine("fit", moved, "--run-dir", second, *TINY)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "started with 4 review decisions remembered for these images" in r.stderr
    seeded = {p: (d.action, d.source) for p, d in DecisionStore(second / "decisions.sqlite").all().items()}
    assert seeded == {renamed[kept]: ("keep", MEMORY_SOURCE), renamed[relabeled]: ("relabel", MEMORY_SOURCE),
                      renamed[dropped]: ("discard", MEMORY_SOURCE), renamed[unsure]: ("skip", MEMORY_SOURCE)}
    # Phase (a) trusts them: the kept and relabeled images are clean in the mixture, so never flagged.
    s2 = pd.read_csv(second / "samples.csv", dtype={"path": str}, keep_default_na=False).set_index("path")
    for decided in (renamed[kept], renamed[relabeled]):
        assert s2.loc[decided, "clean_prob"] == 1.0 and s2.loc[decided, "flagged"] == 0
    out = tmp_path / "labels.csv"
    assert engine("export", second, "--out", out).returncode == 0
    e = pd.read_csv(out, dtype=str, keep_default_na=False).set_index("path")
    assert e.loc[renamed[kept], "status"] == "kept"
    assert e.loc[renamed[relabeled], ["label", "status"]].tolist() == [other, "relabeled"]
    assert e.loc[renamed[dropped], ["label", "status"]].tolist() == ["", "discarded"]
    assert e.loc[renamed[unsure], "status"] in ("unchanged", "auto-relabeled", "needs-review")  # unsure: as if unreviewed

    third = tmp_path / "third"
    r = engine("fit", moved, "--run-dir", third, *TINY, "--no-memory")
    assert r.returncode == 0, r.stderr[-2000:]
    assert not (third / "decisions.sqlite").exists()
    assert json.loads((third / "config.json").read_text())["review"]["memory"] is False
    again = engine("fit", moved, "--run-dir", third, *TINY)  # flags left out keep the run's opt-out
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((third / "config.json").read_text())["review"]["memory"] is False


def test_decisions_import_into_an_opted_out_run_stays_out_of_the_memory(tmp_path: Path):
    from engine.cli import main

    run = make_run(tmp_path, IMAGES)
    config_mod.save(config_mod.with_overrides(RunConfig(), {"review.memory": False}), run.config)
    csv = tmp_path / "decisions.csv"
    csv.write_text("path,sha256,action,label,decided_at,source\ncat/1.png,,relabel,dog,,tab\n")
    assert main(["decisions", "import", str(run.path), str(csv)]) == 0
    assert DecisionStore(run.decisions).get("cat/1.png").label == "dog"
    assert Memory().entries() == []  # the run said no: `decisions import` respects it without --no-memory
