"""Does the number flagged match the noise? Rules for the count side by side on finished runs.

    python bench/flag_count.py RUN [RUN ...]
    python bench/flag_count.py      # DEFAULT_RUNS: the filled runs (`bench/quality.py ... --set budget_s=600
                                    # --work bench/work/budget600`), the sample, two at the profile's epochs

The aim: flagged within +-20 % of the really wrong labels, at most 2 % flagged on clean data, and a
per-class noise estimate within 5 points of the truth. For each finished run with a truth file, from what
the run saved (predictions.npz's loss history, probabilities and features; samples.csv's queue order):

* the run's own flags (samples.csv): its split settings (config.json's `split`);
* the two-component mixture on the losses and on their square roots, each with one shared variance and
  with one variance per component, the mixture fitted within each given class, and the mixture on the
  mean of the (normalised) losses and the out-of-fold head's losses of the given labels;
* cleanlab's count (`cleanlab.count.num_label_issues`, the calibrated confident joint) on the out-of-fold
  probabilities the review order uses, flagging that many from the top of the queue;
* the true count: as many from the top of the queue as are really wrong, the best any count can do with
  this order (a reference, not a rule: it needs the truth).

Scored: flagged, flagged / really wrong, F1, and the per-class noise estimate's error (flagged share of a
class against its wrong share, in points: the worst class and the mean). Also the relabel bar's competence
(engine.method.relabel) on the images the shared- and the per-component mixture call clean. No network runs: seconds per run.
Writes bench/results/flag_count.md.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from cleanlab.count import num_label_issues

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import RESULTS, ROOT  # noqa: E402
from bench.saved_run import load_saved_run  # noqa: E402
from engine.config import RelabelConfig  # noqa: E402
from engine.method.relabel import competence  # noqa: E402
from engine.method.selection import fit_gmm_split, normalise_losses  # noqa: E402

DEFAULT_RUNS = (
    "bench/work/budget600/cifar10-n5000-sym40/clean",
    "bench/work/budget600/cifar10n-worst-n5000/clean",
    "bench/work/budget600/cifar10n-aggre-n5000/clean",
    "bench/work/budget600/cifar10n-random1-n5000/clean",
    "bench/work/budget600/cifar10-clean-n5000/clean",
    "bench/work/budget600/imagenette25-200pc/clean",
    "bench/work/budget600/imagenette5-200pc/clean",
    "bench/work/sample/default",
    "bench/work/quality/cifar10-n5000-sym40/clean",
    "bench/work/quality/cifar10n-worst-n5000/clean",
)
TODAY = "the run's own flags"


def top_of_queue(order: np.ndarray, count: int) -> np.ndarray:
    """Flags for the `count` images first in the queue (highest `order`)."""
    flagged = np.zeros(len(order), bool)
    flagged[np.argsort(-order, kind="stable")[:max(0, int(count))]] = True
    return flagged


def oof_loss(oof: np.ndarray, given: np.ndarray) -> np.ndarray:
    """Cross-entropy of the given label under the out-of-fold head: a loss the classifier's memorising of
    that label does not shrink."""
    return -np.log(np.clip(oof[np.arange(len(given)), given], 1e-6, 1.0))


def per_class_mixture(loss_norm: np.ndarray, given: np.ndarray, *, seed: int, reg_covar: float) -> np.ndarray:
    flagged = np.zeros(len(given), bool)
    for c in np.unique(given):
        members = given == c
        flagged[members] = fit_gmm_split(normalise_losses(loss_norm[members]), seed=seed, reg_covar=reg_covar).flagged
    return flagged


def score(flagged: np.ndarray, wrong: np.ndarray, given: np.ndarray) -> dict:
    tp = int((flagged & wrong).sum())
    precision = tp / max(int(flagged.sum()), 1)
    recall = tp / max(int(wrong.sum()), 1)
    errors = [100.0 * abs(flagged[given == c].mean() - wrong[given == c].mean()) for c in np.unique(given)]
    return {"flagged": int(flagged.sum()),
            "ratio": float(flagged.sum() / wrong.sum()) if wrong.any() else None,
            "f1": 2 * precision * recall / (precision + recall) if wrong.any() and precision + recall else None,
            "error_max": float(max(errors)), "error_mean": float(np.mean(errors))}


def score_run(run: Path) -> dict:
    saved = load_saved_run(run)
    s, cfg, given, wrong = saved.samples, saved.config, saved.given, saved.wrong
    seed = saved.seed
    split = cfg["split"]
    last = saved.losses[-int(split.get("average_last", 1)):]
    loss_norm = normalise_losses(last, split.get("scale", "ce"))
    oof = saved.out_of_fold()
    order = s["suspicion"].to_numpy(float)

    def mixture(scale: str, covariance: str) -> np.ndarray:
        return fit_gmm_split(normalise_losses(last, scale), seed=seed, reg_covar=split["reg_covar"],
                             covariance=covariance).flagged

    rules = {
        TODAY: s["flagged"].to_numpy().astype(bool),
        "mixture on the losses, shared variance": mixture("ce", "tied"),
        "mixture on the losses, one variance per component": mixture("ce", "full"),
        "mixture on their square roots, shared variance": mixture("sqrt", "tied"),
        "mixture on their square roots, one variance per component": mixture("sqrt", "full"),
        "mixture within each class": per_class_mixture(loss_norm, given, seed=seed, reg_covar=split["reg_covar"]),
        "mixture on the mean of the losses and the out-of-fold head's, shared variance":
            fit_gmm_split((loss_norm + normalise_losses(oof_loss(oof, given))) / 2, seed=seed,
                          reg_covar=split["reg_covar"]).flagged,
        "cleanlab's count (out-of-fold), top of the queue": top_of_queue(order, num_label_issues(given, oof)),
        "the true count, top of the queue (reference)": top_of_queue(order, int(wrong.sum())),
    }
    # The relabel bar's competence (engine.method.relabel) on the images each mixture calls clean: a split
    # that leaves an easier clean set raises it, and with it the chance of automatic changes.
    skill = {cov: competence(saved.features, given, ~mixture("ce", cov), seed=seed) for cov in ("tied", "full")}
    return {"run": str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run), "n": len(s),
            "wrong": int(wrong.sum()), "arch": cfg.get("model", {}).get("arch", "resnet18"),
            "rows": {name: score(flagged, wrong, given) for name, flagged in rules.items()}, "competence": skill}


def _cell(x: float | None, fmt: str) -> str:
    return "–" if x is None else format(x, fmt)


def markdown(results: list[dict], command: str) -> str:
    lines = ["# The number flagged against the number wrong: the count's rules side by side", "",
             "Rebuilt from each finished run's saved losses, probabilities and queue order (no network runs). The "
             "aim: flagged / really wrong within 0.8-1.2, at most 2 % flagged on clean data, class noise error "
             "<= 5 points.", "", f"- command: `{command}`", f"- date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC", ""]
    for r in results:
        lines += [f"## {r['run']}", "", f"{r['n']:,} images, {r['wrong']:,} really wrong ({r['arch']} encoder).", "",
                  "| rule | flagged | flagged / wrong | F1 | class noise error, max / mean (points) |",
                  "|---|---:|---:|---:|---:|"]
        for name, row in r["rows"].items():
            lines.append(f"| {name} | {row['flagged']:,} ({100 * row['flagged'] / r['n']:.1f} %) | "
                         f"{_cell(row['ratio'], '.2f')} | {_cell(row['f1'], '.3f')} | "
                         f"{row['error_max']:.1f} / {row['error_mean']:.1f} |")
        skill = r.get("competence", {})
        lines += ["", "The relabel bar's competence on the images the mixture on the losses calls clean: shared variance "
                  f"{_cell(skill.get('tied'), '.3f')}, one variance per component {_cell(skill.get('full'), '.3f')} "
                  f"(the bar: {RelabelConfig().min_competence})."]
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="*", type=Path)
    p.add_argument("--out", type=Path, default=RESULTS / "flag_count.md")
    args = p.parse_args(argv)
    runs = args.runs or [ROOT / r for r in DEFAULT_RUNS if (ROOT / r / "samples.csv").exists()]
    text = markdown([score_run(run) for run in runs], "python bench/flag_count.py " + " ".join(map(str, args.runs)))
    args.out.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
