#!/usr/bin/env python3
"""Does the review loop pay? A simulated reviewer answers from the truth file, in rounds.

    python bench/review_loop.py --case sample
    python bench/review_loop.py --case cifar10n-worst --n-per-class 200 --phase-a bench/work/quality/cifar10n-worst-n2000/clean
    python bench/review_loop.py --case cifar10n-aggre --n-per-class 500 --k 10 --finetune-k 10
    python bench/review_loop.py --case sample --k 5 --rounds 1 --pretrain-epochs 1 --epochs 1   # quick

Per case, once: phase (a) (`fit`, no fine-tuning; or an existing finished run, `--phase-a RUN`, copied,
never changed) and cleanlab's label-quality ranking (`cleanlab.rank.get_label_quality_scores`, its default
self-confidence) on out-of-fold probabilities of the 3-fold small CNN of bench/quality.py (`cleanlab-cnn`).

Per K (a share of the images, --k, default 2,5,10,20 %), on a copy of the phase-(a) run:

1. round 1: the reviewer answers the top K of the review queue (engine.review.queue, as the Review page
   orders it): `keep` where the given label is the true one, else `relabel` to the true label;
2. "review only": `export` (its default, `--auto-relabel confident`) of the run with those decisions;
3. re-rank (`python -m engine rerank`): the next K of the re-ranked queue, next to the next K of the
   phase-(a) queue (wrong labels found per 100 reviewed in round 2, with and without re-ranking);
4. "review + fine-tune": `finetune` with the decisions, then `export`;
5. round 2: the reviewer answers the next K of the fine-tuned run's queue, `finetune` again, `export`
   ("two rounds"); and, for reference, two rounds of review only (round 2 taken from the re-ranked queue).

Labels right are scored over all images and over the images nobody reviewed (the set differs per row:
each row's own unreviewed images, with their given-label accuracy next to it). `--finetune-k` limits the
fine-tuning (the expensive part: ~5 min per fine-tune at 2,000 CIFAR images on two CPU cores) to some K.

Goals (from the issue): at K = 10 %, wrong labels found per 100 reviewed >= cleanlab's + 10; review +
fine-tune lifts the accuracy of the unreviewed images by >= 3 points over review alone on CIFAR-10N worst,
and never lowers it on any case.

Writes bench/results/review_loop_<case>.{md,json}. Run folders: bench/work/review_loop/ (git-ignored);
the workspace memory is a temporary one, so simulated decisions are never remembered for real runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import quality_methods as qm  # noqa: E402
from bench.common import machine_lines  # noqa: E402
from bench.quality_clean import Deadline, call_engine, fit_argv  # noqa: E402
from bench.quality_data import DATA_ROOT, Case, CaseData, make_cases, materialise  # noqa: E402

RESULTS = ROOT / "bench" / "results"
WORK = ROOT / "bench" / "work" / "review_loop"
SOURCE = "bench:simulated-reviewer"


# ============================================================================================ the reviewer


def truth_of(run: Path, truth_csv: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """samples.csv of `run` and the true label of each of its rows."""
    from engine.review.metrics import load_truth

    samples = pd.read_csv(run / "samples.csv", dtype={"path": str, "given_label": str}, keep_default_na=False)
    return samples, load_truth(truth_csv, list(samples["path"]))


def queue_paths(run: Path, *, reranked: bool) -> list[str]:
    """The run's review queue, first to last, as the Review page orders it (undecided images only)."""
    from engine.review import queue
    from engine.review.decisions import load_decisions

    samples = pd.read_csv(run / "samples.csv", dtype={"path": str}, keep_default_na=False)
    if reranked:
        digest = queue.samples_digest((run / "samples.csv").read_bytes())
        samples = queue.with_rerank(samples, queue.current_rerank(run, digest, samples["path"]))
    decided = load_decisions(run / "decisions.sqlite", include_skipped=True) if (run / "decisions.sqlite").exists() else {}
    samples[queue.ACTION] = [decided[p].action if p in decided else "" for p in samples["path"]]
    return list(queue.ordered(samples)["path"])


def answer(run: Path, paths: list[str], truth: dict[str, str], given: dict[str, str]) -> int:
    """The simulated reviewer: keep a right label, relabel a wrong one to the truth. Returns how many were wrong."""
    from engine.review.memory import open_run_store

    store = open_run_store(run, remember=False)
    for p in (p for p in paths if truth[p] == given[p]):
        store.decide([p], "keep", given[p], source=SOURCE)
    wrong = [p for p in paths if truth[p] != given[p]]
    for p in wrong:
        store.decide([p], "relabel", truth[p], source=SOURCE)
    return len(wrong)


def found_per_100(paths: list[str], truth: dict[str, str], given: dict[str, str]) -> float:
    return round(100.0 * sum(truth[p] != given[p] for p in paths) / max(len(paths), 1), 1)


def copy_run(src: Path, dst: Path, *, keep_decisions: bool = False) -> Path:
    """A fresh copy of a run (the source is never written): without its decisions, or with them."""
    shutil.rmtree(dst, ignore_errors=True)
    left_out = ["worker.lock"] + ([] if keep_decisions else ["decisions.sqlite*", "rerank.*"])
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(*left_out))
    return dst


# ============================================================================================ scoring


def export_labels(run: Path, out: Path, auto_relabel: str = "confident") -> pd.DataFrame:
    out.unlink(missing_ok=True)
    argv = ["export", str(run), "--out", str(out), "--auto-relabel", auto_relabel]
    if call_engine(argv, Deadline()) != 0:
        raise RuntimeError(f"`python -m engine {shlex.join(argv)}` failed")
    return pd.read_csv(out, dtype=str, keep_default_na=False)


def scored(run: Path, out: Path, truth: dict[str, str], given: dict[str, str], reviewed: set[str]) -> dict[str, Any]:
    """The default export's accuracy, and the unreviewed images' accuracy had every suggestion been taken
    (`--auto-relabel all`: what the model's suggestions are worth, whatever the bar lets through)."""
    out_all = out.with_name(out.stem + "-all.csv")
    taken = accuracy(export_labels(run, out_all, "all"), truth, given, reviewed)
    return {**accuracy(export_labels(run, out), truth, given, reviewed), "unreviewed_all_taken": taken["unreviewed"]}


def accuracy(export: pd.DataFrame, truth: dict[str, str], given: dict[str, str], reviewed: set[str]) -> dict[str, Any]:
    """Labels right in an export: all images, the images nobody reviewed, and those images' given labels."""
    label = dict(zip(export["path"], export["label"], strict=True))
    everyone = [p for p in truth if label.get(p, "") != ""]  # discarded images (none here) are left out
    rest = [p for p in everyone if p not in reviewed]

    def right(paths: list[str], of: dict[str, str]) -> float:
        return round(100.0 * sum(of[p] == truth[p] for p in paths) / max(len(paths), 1), 2)

    return {"all": right(everyone, label), "unreviewed": right(rest, label), "given_unreviewed": right(rest, given),
            "n_unreviewed": len(rest), "changed": int(sum(label[p] != given[p] for p in everyone))}


# ============================================================================================ one case


@dataclass
class CaseResult:
    case: str
    title: str
    n: int
    wrong: int
    phase_a: str
    phase_a_seconds: float | None
    cleanlab_seconds: float
    given_acc: float
    rows: list[dict[str, Any]] = field(default_factory=list)
    commands: list[str] = field(default_factory=list)


def cleanlab_ranking(data: CaseData, work: Path, image_size: int, s: qm.Settings) -> tuple[list[str], float]:
    """Paths, most suspicious first, by cleanlab's label quality on out-of-fold small-CNN probabilities."""
    import torch
    from cleanlab.rank import get_label_quality_scores

    from bench.quality_cnn import CnnRecipe, out_of_fold_probs, to_tensor
    from engine.data.cache import load_prepared

    t0 = time.perf_counter()
    d = qm.prepare_case(data.train, data.truth, work / "cnn-data", image_size)
    paths = list(load_prepared(work / "cnn-data").paths)
    sample = np.asarray(d.images[:: max(1, len(d.images) // 1000)], dtype=np.float32) / 255
    mean = torch.from_numpy(sample.mean(axis=(0, 1, 2)))
    std = torch.from_numpy(np.maximum(sample.std(axis=(0, 1, 2)), 0.05))
    x = to_tensor(np.asarray(d.images), mean, std, torch.device("cpu"))
    probs, _, _ = out_of_fold_probs(x, d.labels, len(d.classes), CnnRecipe(epochs=s.cnn_epochs), folds=s.folds,
                                    seed=s.seed)
    quality = get_label_quality_scores(d.labels, probs)
    order = np.lexsort((np.array(paths, dtype=object).astype(str), quality))
    return [paths[i] for i in order], time.perf_counter() - t0


def phase_a_run(case: Case, data: CaseData, s: qm.Settings, image_size: int | None, given_run: Path | None,
                say) -> tuple[Path, float | None, str]:
    if given_run is not None:
        if not (given_run / "samples.csv").exists():
            raise SystemExit(f"--phase-a {given_run}: no samples.csv there; finish that fit first")
        return given_run, None, f"existing run {given_run}"
    run = WORK / case.name / "phase-a"
    argv = fit_argv(data, run, s, image_size) + ["--set", "embed.enabled=false"]
    command = "python -m engine " + shlex.join(argv)
    if (run / "samples.csv").exists() and (run / "predictions.npz").exists():
        say(f"   reusing {run}")
        return run, None, command
    shutil.rmtree(run, ignore_errors=True)
    say(f"   {command}")
    t0 = time.perf_counter()
    if call_engine(argv, Deadline()) != 0:
        raise RuntimeError(f"{command} failed")
    return run, round(time.perf_counter() - t0, 1), command


def timed(fn, *args) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args)
    return out, round(time.perf_counter() - t0, 1)


def engine_ok(argv: list[str]) -> None:
    if call_engine(argv, Deadline()) != 0:
        raise RuntimeError(f"`python -m engine {shlex.join(argv)}` failed")


def one_k(share: float, base: Path, work: Path, truth: dict[str, str], given: dict[str, str], cleanlab: list[str],
          *, finetune: bool, rounds: int, sets: list[str], say) -> dict[str, Any]:
    n = len(truth)
    k = max(1, round(share * n))
    settings = [a for item in sets for a in ("--set", item)]
    tag = f"k{round(share * 100)}"
    run = copy_run(base, work / tag)
    row: dict[str, Any] = {"k_share": share, "k": k}
    first = queue_paths(run, reranked=False)[:k]
    row["found_clean"] = found_per_100(first, truth, given)
    row["found_cleanlab"] = found_per_100(cleanlab[:k], truth, given)
    answer(run, first, truth, given)
    reviewed = set(first)
    row["given"] = accuracy(pd.DataFrame({"path": list(given), "label": list(given.values())}), truth, given, reviewed)
    row["review_only"] = scored(run, work / f"{tag}-review.csv", truth, given, reviewed)
    row["round2_found_phase_a_order"] = found_per_100(queue_paths(run, reranked=False)[:k], truth, given)
    _, row["rerank_seconds"] = timed(engine_ok, ["rerank", str(run)])
    second_reranked = queue_paths(run, reranked=True)[:k]
    row["round2_found_reranked"] = found_per_100(second_reranked, truth, given)
    say(f"   K={share:.0%} ({k}): found/100 CLeaN {row['found_clean']} vs cleanlab {row['found_cleanlab']}; "
        f"round 2 {row['round2_found_phase_a_order']} (phase-a order) / {row['round2_found_reranked']} (re-ranked); "
        f"review only: all {row['review_only']['all']} %, unreviewed {row['review_only']['unreviewed']} % "
        f"(given {row['review_only']['given_unreviewed']} %)")
    if rounds >= 2:  # two rounds of review only, the second from the re-ranked queue
        only = copy_run(run, work / f"{tag}-review-only", keep_decisions=True)  # round 1's answers stand
        answer(only, second_reranked, truth, given)
        row["two_rounds_review_only"] = scored(only, work / f"{tag}-review2.csv", truth, given,
                                               reviewed | set(second_reranked))
        shutil.rmtree(only, ignore_errors=True)
    if not finetune:
        return row
    _, row["finetune1_seconds"] = timed(engine_ok, ["finetune", str(run), "--quiet", *settings])
    row["review_finetune"] = scored(run, work / f"{tag}-finetune.csv", truth, given, reviewed)
    say(f"   K={share:.0%}: review + fine-tune: all {row['review_finetune']['all']} %, unreviewed "
        f"{row['review_finetune']['unreviewed']} % ({row['finetune1_seconds']:.0f} s)")
    if rounds >= 2:
        second = queue_paths(run, reranked=False)[:k]
        row["round2_found_finetuned"] = found_per_100(second, truth, given)
        answer(run, second, truth, given)
        _, row["finetune2_seconds"] = timed(engine_ok, ["finetune", str(run), "--quiet", *settings])
        row["two_rounds"] = scored(run, work / f"{tag}-finetune2.csv", truth, given,
                                   reviewed | set(second))
        say(f"   K={share:.0%}: round 2 found/100 {row['round2_found_finetuned']} (fine-tuned queue); two rounds: "
            f"all {row['two_rounds']['all']} %, unreviewed {row['two_rounds']['unreviewed']} %")
    return row


def run_case(case: Case, args: argparse.Namespace, s: qm.Settings, say=print) -> CaseResult:
    data = materialise(case, root=DATA_ROOT, seed=s.seed, shared=args.shared)
    work = WORK / case.name
    work.mkdir(parents=True, exist_ok=True)
    base, seconds_a, command = phase_a_run(case, data, s, args.image_size, args.phase_a, say)
    samples, true = truth_of(base, data.truth)
    truth = dict(zip(samples["path"], true, strict=True))
    given = dict(zip(samples["path"], samples["given_label"], strict=True))
    cfg = json.loads((base / "config.json").read_text())
    cached = work / f"cleanlab_ranking_{s.folds}x{s.cnn_epochs}.json"  # label-free of the run: reused across runs
    saved = json.loads(cached.read_text()) if cached.exists() else None
    if saved is not None and sorted(saved["paths"]) == sorted(truth):
        cleanlab, cl_seconds = saved["paths"], saved["seconds"]
    else:
        cleanlab, cl_seconds = cleanlab_ranking(data, work, int(cfg["data"]["image_size"]), s)
        cached.write_text(json.dumps({"paths": cleanlab, "seconds": cl_seconds}))
    wrong = sum(truth[p] != given[p] for p in truth)
    result = CaseResult(case.name, case.title, len(truth), wrong, command, seconds_a, round(cl_seconds, 1),
                        round(100.0 * (1 - wrong / len(truth)), 2))
    result.commands.append("python " + shlex.join(["bench/review_loop.py", *sys.argv[1:]]))
    for share in args.k:
        finetune = args.finetune_k is None or round(share * 100) in args.finetune_k
        result.rows.append(one_k(share, base, work, truth, given, cleanlab, finetune=finetune, rounds=args.rounds,
                                 sets=args.sets, say=say))
    return result


# ============================================================================================ report


def _acc(cell: dict[str, Any] | None, key: str) -> str:
    return "–" if not cell else f"{cell[key]:.1f}"


def _pair(cell: dict[str, Any] | None) -> str:
    if not cell:
        return "not run"
    return (f"{cell['all']:.1f} / {cell['unreviewed']:.1f} (given {cell['given_unreviewed']:.1f}; every suggestion "
            f"taken {cell['unreviewed_all_taken']:.1f})")


def markdown(r: CaseResult) -> str:
    lines = [f"# Review loop: {r.case}", "", f"{r.title}: {r.n:,} images, {r.wrong:,} wrong labels "
             f"(given labels {r.given_acc:.1f} % right).", "",
             f"Phase (a): {r.phase_a}" + (f" ({r.phase_a_seconds:.0f} s)" if r.phase_a_seconds else "") + ".",
             f"cleanlab ranking: 3-fold small CNN ({r.cleanlab_seconds:.0f} s).", "",
             "Wrong labels found per 100 reviewed:", "",
             "| K | CLeaN queue | cleanlab ranking | round 2: phase-(a) order | round 2: re-ranked | "
             "round 2: fine-tuned queue | re-rank s |",
             "|---|---|---|---|---|---|---|"]
    for row in r.rows:
        lines.append(f"| {row['k_share']:.0%} ({row['k']}) | {row['found_clean']} | {row['found_cleanlab']} | "
                     f"{row['round2_found_phase_a_order']} | {row['round2_found_reranked']} | "
                     f"{row.get('round2_found_finetuned', 'not run')} | {row['rerank_seconds']} |")
    lines += ["", "Labels right in the export (its default, `--auto-relabel confident`), % — all images / the images "
              "nobody reviewed (their given labels; and had every suggestion been taken, `--auto-relabel all`):", "",
              "| K | review only | review + fine-tune | two rounds, review only | two rounds, review + fine-tune | "
              "fine-tune s (round 1, 2) |", "|---|---|---|---|---|---|"]
    for row in r.rows:
        secs = ", ".join(str(row[k]) for k in ("finetune1_seconds", "finetune2_seconds") if k in row) or "–"
        lines.append(f"| {row['k_share']:.0%} | {_pair(row['review_only'])} | {_pair(row.get('review_finetune'))} | "
                     f"{_pair(row.get('two_rounds_review_only'))} | {_pair(row.get('two_rounds'))} | {secs} |")
    lines += ["", "Checks (the issue's goals):", ""]
    for row in r.rows:
        if round(row["k_share"] * 100) == 10:
            margin = row["found_clean"] - row["found_cleanlab"]
            lines.append(f"- K = 10 %: found per 100 {row['found_clean']} vs cleanlab {row['found_cleanlab']} "
                         f"({margin:+.1f}; goal ≥ +10): {'met' if margin >= 10 else 'NOT met'}")
        if row.get("review_finetune"):
            lift = row["review_finetune"]["unreviewed"] - row["review_only"]["unreviewed"]
            taken = row["review_finetune"]["unreviewed_all_taken"] - row["review_only"]["unreviewed_all_taken"]
            lines.append(f"- K = {row['k_share']:.0%}: fine-tuning changes the unreviewed images' accuracy by "
                         f"{lift:+.1f} points over review alone in the default export ({taken:+.1f} with every "
                         f"suggestion taken) (goal: ≥ +3 on CIFAR-10N worst, never below 0): "
                         f"{'never lower: met' if lift >= 0 else 'LOWER: not met'}")
    lines += ["", "Commands:", "", *[f"    {c}" for c in r.commands], "", *machine_lines(),
              f"Written {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}.", ""]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--case", default="sample", help="one case of bench/quality.py (default: sample)")
    p.add_argument("--n-per-class", type=int, default=None)
    p.add_argument("--rows", default="first", choices=["first", "last"])
    p.add_argument("--noise", default="symmetric")
    p.add_argument("--rate", type=float, default=0.4)
    p.add_argument("--k", default="2,5,10,20", help="comma list of K in %% of the images (default 2,5,10,20)")
    p.add_argument("--finetune-k", default=None, help="comma list of the K (%%) that are fine-tuned (default: all)")
    p.add_argument("--rounds", type=int, default=2, choices=[1, 2])
    p.add_argument("--phase-a", type=Path, default=None, help="a finished phase-(a) run of the same images to start "
                   "from (copied, never changed)")
    p.add_argument("--pretrain-epochs", type=int, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--image-size", type=int, default=None)
    p.add_argument("--cnn-epochs", type=int, default=20)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="engine setting for the fit and every fine-tune (repeatable), e.g. finetune.epochs=2")
    p.add_argument("--shared", type=Path, default=None, help="the shared data folder (default ../shared/data)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--suffix", default="", help="added to the results' file names, e.g. -finetune")
    p.add_argument("--seed", type=int, default=0)
    return p


def main(argv: list[str] | None = None) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # progress lines as they happen, also into a log file
    args = build_parser().parse_args(argv)
    args.k = [float(v) / 100 for v in args.k.split(",")]
    args.finetune_k = None if args.finetune_k is None else {int(v) for v in args.finetune_k.split(",")}
    case = make_cases([args.case], [(args.noise, args.rate)], n_per_class=args.n_per_class, test_per_class=None,
                      data=None, test=None, mapping=None, rows=args.rows)[0]
    s = qm.Settings(seed=args.seed, device="cpu", pretrain_epochs=args.pretrain_epochs, epochs=args.epochs,
                    cnn_epochs=args.cnn_epochs, finetune=False, quiet=True, sets=tuple(args.sets))
    # Simulated decisions must never reach the memory real runs start from.
    with tempfile.TemporaryDirectory(prefix="clean-review-bench-") as ws:
        os.environ["CLEAN_WORKSPACE"] = ws
        result = run_case(case, args, s)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"review_loop_{case.name}{args.suffix}.md").write_text(markdown(result))
    (args.out / f"review_loop_{case.name}{args.suffix}.json").write_text(json.dumps(result.__dict__, indent=1,
                                                                                   default=str))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
