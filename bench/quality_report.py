"""Results of bench/quality.py: per-case markdown + JSON + PNG, the aggregate quality.md, the GPU report.

Each case writes `quality_<case>.json` (everything), `quality_<case>.md` (for people) and
`quality_<case>.png` (F1 and AUROC bars per method). `quality.md` / `quality.png` are rebuilt from every
`quality_*.json` in the results folder, so runs of different cases on different days add up.
"""

from __future__ import annotations

import json
import math
import os
import platform
from pathlib import Path
from typing import Any

from bench.common import cpu_model, gpu_name, usable_cores

# The targets CLeaN default is held to, against the best baseline the case has (target_check):
TARGET_MARGIN = 0.05  # against `cleanlab` (same network and budget): F1 +0.05 in no more time
USER_BASELINE = "cleanlab-cnn"  # the baseline a user would run instead; when present it is the one that counts
USER_F1_MARGIN = 0.10
USER_AUROC_MARGIN = 0.05
TIME_LIMIT_S = 600.0  # CLeaN's own time on the machine the case ran on
# Ciortan et al. 2021, Table 1: CIFAR-10 test accuracy (%) with ELR after SimCLR pre-training.
PAPER_TABLE1: dict[tuple[str, float], float] = {("symmetric", 0.4): 92.0, ("symmetric", 0.8): 84.8,
                                                ("asymmetric", 0.4): 89.5}
DEFINITIONS = """\
Definitions
- Truly mislabeled = given label != true label (truth file). Precision, recall and F1 are those of the flags;
  AUROC ranks images by 1 - clean score (CLeaN: GMM clean probability; cleanlab: self-confidence from
  `cleanlab.rank.get_label_quality_scores`; kNN: share of the k neighbours that agree with the given label).
  Scored with `engine.review.metrics.detection_metrics`.
- Exported labels (bench/quality_labels.py), scored against the truth: for CLeaN rows the CSV that
  `python -m engine export RUN --out F --format csv` writes (labels) with RUN/samples.csv (flags); for
  "after (a)" of a fine-tuned run the same export of phase (a)'s samples (`samples_phase_a.csv`), i.e. what
  `fit` without --finetune exports. For cleanlab and kNN, what a user accepting every suggestion gets.
  "labels right: given → exported" = share of images whose given / exported label is the true one, and the
  change in points. "flagged / really wrong" = flagged images over truly wrong ones (the count when none is
  wrong). Class noise error = over the classes of the given labels, |share of the class flagged − share of
  the class truly wrong|, in points: max / mean. Auto-changed = exported labels that differ from the given
  one without a human decision (no decisions are made here); "right" = the share of those that equal the true
  label. Rows recorded before exports were scored show the engine's corrected accuracy in "labels right".
- CLeaN rows come from one `python -m engine fit ... --finetune` run per variant: "after (a)" = `metrics_phase_a.json`
  (pre-training + robust classifier + GMM), "after (b)" = `metrics.json` after weighted-SupCon fine-tuning on
  the pseudo-labels (no human review). Test acc = the run's own test accuracy (`--test`).
- cleanlab: `cleanlab.filter.find_label_issues(labels, pred_probs)` (default filter, prune_by_noise_rate) on
  out-of-sample probabilities of K-fold stratified cross-validation of the same network (engine.method.models,
  same stem and image size) trained from scratch with cross-entropy by the engine's own training loop
  (same augmentation, optimiser and learning rate as CLeaN's classifier). Budget: the training image passes
  of CLeaN default's phase (a), B = (2 x pretrain epochs + classifier epochs) x N (SimCLR sees two views per
  image; the head warm-up on cached features is left out). K folds of E epochs on (K-1)/K of N cost
  E (K-1) N passes, so E = round(B / ((K-1) N)). Corrected label of a flagged image = argmax of its
  out-of-sample probabilities. Test acc = mean test accuracy of the K fold models.
- cleanlab, small CNN (`cleanlab-cnn`, the baseline a user would run instead; bench/quality_cnn.py): the same
  cleanlab calls on out-of-sample probabilities of K-fold cross-validation of a plain small CNN (3 conv blocks
  32-64-128 with BatchNorm, ReLU, max-pool; global average pooling; one linear layer) trained from scratch with
  cross-entropy, SGD momentum 0.9, cosine schedule, crop + flip, 20 epochs per fold (--cnn-epochs), on the same
  decoded images at the same size; corrected label and test acc as for cleanlab.
- kNN: features of the clean run's SimCLR-pre-trained encoder (`checkpoints/pretrain.pt`) on un-augmented
  images, L2-normalised, k cosine neighbours without the image itself; flagged when the plurality label of
  the neighbours differs from the given label (a tie with the given label keeps it; with 10 classes this
  is not the same as agreement < 0.5); corrected label = plurality label. Test acc = plurality of each
  test image's k nearest training images under the corrected labels.
- Time (s) = the method's own work: CLeaN = the run's prepare stage + its fit (+ finetune) summary seconds
  without the UMAP map (a picture for the app, not part of the detection: left out unless --map, and its
  stage time subtracted with --map); pre-training shared by runs on the same images is added to each run
  that uses it. cleanlab, cleanlab-cnn = prepare + K trainings + predictions + cleanlab, without test evaluation.
  kNN = the pre-training it reuses + features + neighbour search.
  Wall (s) = the whole call, test evaluation included (and the map with --map), plus any pre-training it reused."""


def machine() -> dict[str, Any]:
    import torch

    return {"cpu": cpu_model(), "cores": usable_cores(), "cpu_count": os.cpu_count(), "gpu": gpu_name(),
            "torch": torch.__version__, "python": platform.python_version(),
            "load": [round(x, 2) for x in os.getloadavg()]}


def _num(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, int):
        return f"{v:,}"
    return f"{v:.{digits}f}"


def _secs(v: Any) -> str:
    """Seconds: one decimal under 10 s so that short runs do not read as 0."""
    if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)) and abs(v) < 10:
        return f"{float(v):.1f}"
    return _num(v, 0)


def table(rows: list[dict[str, Any]]) -> list[str]:
    out = ["| method | precision | recall | F1 | AUROC | flagged | flagged / really wrong | class noise error, "
           "max / mean (pts) | labels right: given → exported | change (pts) | auto-changed | auto-changes right "
           "| test acc | time (s) | wall (s) | note |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        m = r["metrics"]
        if r.get("error"):
            dashes = " | ".join(["–"] * 13)
            out.append(f"| {r['method']} | {dashes} | {_secs(r.get('wall_seconds'))} | failed: {r['error']} |")
            continue
        out.append(f"| {r['method']} | {_num(m.get('precision'))} | {_num(m.get('recall'))} | {_num(m.get('f1'))} | "
                   f"{_num(m.get('auroc'))} | {_num(m.get('n_flagged'))} | {' | '.join(export_cells(r))} | "
                   f"{_num(r.get('test_acc'))} | {_secs(r.get('seconds'))} | {_secs(r.get('wall_seconds'))} | "
                   f"{r.get('note', '')} |")
    return out


def export_cells(row: dict[str, Any]) -> list[str]:
    """The six cells of the exported-label columns (quality_labels.label_scores)."""
    e, m = row.get("export") or {}, row.get("metrics") or {}
    if not e:  # a row recorded before exports were scored: the engine's corrected accuracy (DEFINITIONS)
        given, exported = m.get("given_label_accuracy"), m.get("corrected_accuracy")
        gain = None if given is None or exported is None else 100 * (exported - given)
        return ["–", "–", _right(given, exported), _signed(gain), "–", "–"]
    ratio = f"{e['n_flagged']:,} / 0" if e.get("flag_ratio") is None else f"{e['flag_ratio']:.2f}×"
    classes = f"{e['class_error_max']:.1f} / {e['class_error_mean']:.1f}" if e.get("class_error_max") is not None \
        else "–"
    auto = "–" if e.get("auto_precision") is None else f"{100 * e['auto_precision']:.1f} %"
    return [ratio, classes, _right(e["given_right"], e["exported_right"]), _signed(e["gain_points"]),
            f"{e['auto_changed']:,}", auto]


def _right(given: float | None, exported: float | None) -> str:
    if given is None or exported is None:
        return "–"
    return f"{100 * given:.1f} % → {100 * exported:.1f} %"


def _signed(points: float | None) -> str:
    return "–" if points is None else f"{points:+.1f}"


def _usable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in rows if not r.get("error") and r.get("metrics")]


def target_check(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """CLeaN default (after (a) and after (b)) against the case's baseline.

    Against `cleanlab-cnn` (the baseline a user would run) when the case has it: F1 >= its F1 + 0.10,
    AUROC >= its AUROC + 0.05 and CLeaN's time <= 10 minutes; else against `cleanlab`: F1 >= its F1 + 0.05
    in no more time. Not checked (empty) where no label is wrong: there is nothing to detect.
    """
    ok = _usable(rows)
    base = next((r for r in ok if r["key"] == USER_BASELINE), None) or next((r for r in ok if r["key"] == "cleanlab"),
                                                                            None)
    if base is None or not base["metrics"].get("n_mislabeled", 1):
        return []
    user = base["key"] == USER_BASELINE
    out = []
    for r in (r for r in ok if r["key"] == "clean"):
        m, b = r["metrics"], base["metrics"]
        f1_gap = m["f1"] - (b["f1"] + (USER_F1_MARGIN if user else TARGET_MARGIN))
        auroc_gap = (m["auroc"] - (b["auroc"] + USER_AUROC_MARGIN)) if user else None
        time_gap = r["seconds"] - (TIME_LIMIT_S if user else base["seconds"])
        met = f1_gap >= 0 and time_gap <= 0 and (auroc_gap is None or auroc_gap >= 0)  # NaN AUROC: not met
        out.append({"row": r["method"], "baseline": base["key"], "f1": m["f1"], "baseline_f1": b["f1"],
                    "f1_gap": round(f1_gap, 4), "auroc": m.get("auroc") if user else None,
                    "baseline_auroc": b.get("auroc") if user else None,
                    "auroc_gap": None if auroc_gap is None else round(auroc_gap, 4), "seconds": r["seconds"],
                    "baseline_seconds": base["seconds"], "time_limit_s": TIME_LIMIT_S if user else base["seconds"],
                    "time_gap_s": round(time_gap, 1), "met": bool(met)})
    return out


def never_worse(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """CLeaN default's exported labels against the given labels: at least as many right, on every case."""
    out = []
    for r in (r for r in _usable(rows) if r["key"] == "clean" and r.get("export")):
        e = r["export"]
        out.append({"row": r["method"], "given_right": e["given_right"], "exported_right": e["exported_right"],
                    "gain_points": e["gain_points"], "auto_changed": e["auto_changed"],
                    "auto_precision": e["auto_precision"], "met": bool(e["exported_right"] >= e["given_right"])})
    return out


def _target_lines(checks: list[dict[str, Any]]) -> list[str]:
    if not checks:
        return ["- target not checked: this case has no baseline row, no CLeaN default row, or no wrong label"]
    lines = []
    for c in checks:
        user = c["baseline"] == USER_BASELINE
        parts = []
        if c["f1_gap"] < 0:
            parts.append(f"F1 short by {-c['f1_gap']:.3f}")
        if c["auroc_gap"] is not None and not c["auroc_gap"] >= 0:
            parts.append(f"AUROC short by {-c['auroc_gap']:.3f}")
        if c["time_gap_s"] > 0:
            parts.append(f"{c['time_gap_s']:.0f} s over {c['time_limit_s']:.0f} s" if user else
                         f"{c['time_gap_s']:.0f} s slower ({c['seconds'] / max(c['baseline_seconds'], 1e-9):.2f}x)")
        verdict = "**met**" if c["met"] else "**not met**: " + ", ".join(parts)
        f1 = (f"F1 {c['f1']:.3f} vs {c['baseline']} {c['baseline_f1']:.3f} + "
              f"{USER_F1_MARGIN if user else TARGET_MARGIN} (margin {c['f1_gap']:+.3f})")
        auroc = (f"; AUROC {c['auroc']:.3f} vs {c['baseline_auroc']:.3f} + {USER_AUROC_MARGIN} "
                 f"(margin {c['auroc_gap']:+.3f})") if user else ""
        limit = f"<= {c['time_limit_s']:.0f} s" if user else f"vs {c['baseline_seconds']:.0f} s"
        lines.append(f"- {c['row']}: {f1}{auroc}; time {c['seconds']:.0f} s {limit} -> {verdict}")
    return lines


def _never_worse_lines(checks: list[dict[str, Any]]) -> list[str]:
    if not checks:
        return ["- never worse: not checked (no scored export of CLeaN default)"]
    lines = []
    for c in checks:
        right = "–" if c["auto_precision"] is None else f"{100 * c['auto_precision']:.1f} %"
        lines.append(f"- never worse, {c['row']}: exported labels {100 * c['exported_right']:.1f} % right vs given "
                     f"{100 * c['given_right']:.1f} % (margin {c['gain_points']:+.1f} points; "
                     f"{c['auto_changed']:,} auto-changed, {right} of them right) -> "
                     f"{'**met**' if c['met'] else '**not met**'}")
    return lines


def check_lines(result: dict[str, Any]) -> list[str]:
    """Met / not met with the margins, recomputed from the rows (one rule for old and new results)."""
    rows = result["rows"]
    nothing_wrong = any(r.get("metrics", {}).get("n_mislabeled") == 0 for r in _usable(rows))
    target = (["- target not checked: no label is wrong in this case, so there is nothing to detect; every change "
               "the export makes is for the worse"] if nothing_wrong else _target_lines(target_check(rows)))
    return [f"Targets: {TARGET_TEXT}", "", *target, *_never_worse_lines(never_worse(rows))]


TARGET_TEXT = (f"CLeaN default against `{USER_BASELINE}` where the case has it: F1 >= its F1 + {USER_F1_MARGIN} and "
               f"AUROC >= its AUROC + {USER_AUROC_MARGIN}, CLeaN's time <= {TIME_LIMIT_S / 60:.0f} minutes on this "
               f"machine; else against `cleanlab` (same network and budget): F1 >= its F1 + {TARGET_MARGIN} in no "
               "more time; not checked where no label is wrong. On every case, never worse: the exported labels "
               "are at least as often right as the given ones.")


def case_markdown(result: dict[str, Any]) -> str:
    m, s, b = result["machine"], result["settings"], result["budget"]
    lines = [
        f"# Label-error detection quality: {result['case']['name']}",
        "",
        f"- date: {result['date']}",
        f"- machine: CPU {m['cpu']}, {m['cores']} cores usable (of {m['cpu_count']}), load average at the end "
        f"{' '.join(str(x) for x in m['load'])}; GPU: {m['gpu'] or 'none'}; torch {m['torch']}, Python {m['python']}",
        f"- command: `{result['command']}`",
        f"- data: {result['case']['title']}: {result['n']:,} images, {result['n_mislabeled']:,} truly mislabeled "
        f"({result['n_mislabeled'] / max(result['n'], 1):.1%}); "
        + (f"clean test split {result['n_test']:,} images" if result.get("n_test") else "no test split"),
        f"- settings: {s['image_size']} px, {s.get('arch', 'resnet18')} encoder, {s['stem']} stem, device {s['device']}, "
        f"seed {s['seed']}; pre-training "
        f"{s['pretrain_epochs']} epochs, head warm-up {s['warmup_epochs']}, classifier {s['classify_epochs']} epochs; "
        f"fine-tuning {s['finetune_epochs']} SupCon epochs; extra --set: {', '.join(s['sets']) or 'none'}"
        + ("; UMAP map left out (bench default; --map draws it)" if s.get("skip_map") else "; UMAP map drawn (--map)"),
        *([f"- trained by CLeaN default: {t['pretrain_epochs']} pre-training + {t['classify_epochs']} classifier epochs"
           + " (its config.json" + ("; the time limit, " + f"{t['time_limit_s']:.0f} s, "
                                     + ("grew" if t['classify_epochs'] > s['classify_epochs'] else "shrank")
                                     + " the profile's)"
                                     if (t['pretrain_epochs'], t['classify_epochs'])
                                     != (s['pretrain_epochs'], s['classify_epochs'])
                                     and (t.get('time_limit_s') or 0) > 0 else ")")]
          if (t := result.get("trained")) else []),
        f"- budget: B = (2 x {s['pretrain_epochs']} + {s['classify_epochs']}) x {result['n']:,} = "
        f"{b['image_passes']:,} image passes; cleanlab {s['folds']} folds x {b['fold_epochs']} epochs on "
        f"(K-1)/K of the images = {b['cleanlab_passes']:,} passes"
        + (f"; cleanlab-cnn {s['folds']} folds x {s['cnn_epochs']} epochs of the small CNN = {b['cnn_passes']:,} "
           "passes" if "cnn_passes" in b else "") + f"; kNN k = {s['knn_k']}",
        "",
        *table(result["rows"]),
        "",
        *check_lines(result),
        "",
        DEFINITIONS,
        "",
        "Equivalent engine commands of the CLeaN rows:",
        "",
        *(f"- `{c}`" for c in dict.fromkeys(r["command"] for r in result["rows"] if r["command"].startswith("python"))),
        "",
    ]
    return "\n".join(lines)


def write_chart(path: Path, sections: list[tuple[str, list[dict[str, Any]]]]) -> str | None:
    """F1 and AUROC bars per method, one panel per case. Returns why it was skipped, or None."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed (pip install -r bench/requirements.txt)"
    cols = min(2, len(sections)) or 1
    rows = math.ceil(len(sections) / cols) or 1
    fig, axes = plt.subplots(rows, cols, figsize=(7.5 * cols, 4.2 * rows), squeeze=False)
    for ax, (title, data) in zip(axes.flat, sections, strict=False):
        good = [r for r in data if not r.get("error") and r.get("metrics")]
        x = range(len(good))
        # metrics.json writes an undefined score (AUROC where no label is wrong) as null: no bar
        f1, auroc = ([_or_nan(r["metrics"].get(k)) for r in good] for k in ("f1", "auroc"))
        ax.bar([i - 0.2 for i in x], f1, width=0.4, label="F1", color="#3b75af")
        ax.bar([i + 0.2 for i in x], auroc, width=0.4, label="AUROC", color="#ef8636")
        ax.set_xticks(list(x), [r["method"].replace(", after", "\nafter") for r in good], rotation=35, ha="right",
                      fontsize=7)
        ax.set_ylim(0, 1.12)  # headroom for the legend above bars that reach 1
        ax.set_title(title, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=7, loc="upper center", ncol=2, frameon=False)
    for ax in list(axes.flat)[len(sections):]:
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _or_nan(v: Any) -> float:
    return float("nan") if v is None else float(v)


def write_case(results: Path, result: dict[str, Any]) -> list[Path]:
    """quality_<case>.json/.md/.png, then the aggregate quality.md/.png. Returns the files written."""
    from engine.runs.atomic import atomic_write_text

    name = result["case"]["name"]
    base = results / f"quality_{name}"
    png = base.with_suffix(".png")
    why = write_chart(png, [(f"{name} ({result['settings']['device']})", result["rows"])])
    if why:
        result["chart"] = f"skipped: {why}"
    atomic_write_text(base.with_suffix(".json"), json.dumps(result, indent=2) + "\n")
    atomic_write_text(base.with_suffix(".md"), case_markdown(result)
                      + ("" if why else f"\n![F1 and AUROC per method]({png.name})\n"))
    return [base.with_suffix(".json"), base.with_suffix(".md"), *([] if why else [png]), *write_aggregate(results)]


FINDINGS = "quality_findings.md"  # hand-written causes of any shortfall; quoted in quality.md when present


def write_aggregate(results: Path) -> list[Path]:
    from engine.runs.atomic import atomic_write_text

    cases = [json.loads(p.read_text()) for p in sorted(results.glob("quality_*.json"))]
    if not cases:
        return []
    lines = ["# Label-error detection quality: all cases", "",
             "Rebuilt from every `quality_<case>.json` in this folder; each section is one invocation of "
             "`bench/quality.py` (its command, machine and settings are in `quality_<case>.md`).", ""]
    for c in cases:
        lines += [f"## {c['case']['name']}", "",
                  f"{c['case']['title']}; {c['n']:,} images; {c['settings']['device']} "
                  f"({c['machine']['gpu'] or c['machine']['cpu']}); {c['date']}; `{c['command']}`", "",
                  *table(c["rows"]), "", *check_lines(c), ""]
    findings = results / FINDINGS
    if findings.exists():  # the analysis of the shortfalls is written by a person, next to the numbers
        lines += [findings.read_text().strip(), ""]
    lines += [DEFINITIONS, ""]
    png = results / "quality.png"
    why = write_chart(png, [(f"{c['case']['name']} ({c['settings']['device']})", c["rows"]) for c in cases])
    if not why:
        lines += ["![F1 and AUROC per method and case](quality.png)", ""]
    atomic_write_text(results / "quality.md", "\n".join(lines))
    return [results / "quality.md", *([] if why else [png])]


def gpu_markdown(results: list[dict[str, Any]], *, command: str, dry_run: bool, elapsed_s: float) -> str:
    """Full CIFAR-10 with ELR next to the paper's Table 1."""
    first = results[0]
    m, s = first["machine"], first["settings"]
    lines = [
        "# CLeaN on full CIFAR-10 with a GPU" + (" (CPU DRY RUN: tiny sizes, numbers mean nothing)" if dry_run else ""),
        "",
        f"- date: {first['date']}",
        f"- card: {m['gpu'] or 'none (CPU)'}; CPU {m['cpu']}, {m['cores']} cores; torch {m['torch']}",
        f"- command: `{command}` (bench/gpu_quality.sh)",
        f"- data: {first['n']:,} CIFAR-10 train images, clean test split {first.get('n_test') or 0:,} images; "
        "noise from `python -m engine noise`",
        f"- settings: ELR, {s['image_size']} px, {s['stem']} stem, SimCLR {s['pretrain_epochs']} epochs (run once on "
        f"these images and shared by the noise settings: it never sees labels), head warm-up {s['warmup_epochs']}, "
        f"classifier {s['classify_epochs']} epochs; extra --set: {', '.join(s['sets']) or 'none'}; "
        f"UMAP map {'left out' if s.get('skip_map') else 'drawn (--map)'}",
        "- paper: Ciortan et al. 2021, Table 1, test accuracy after pre-training with ELR (their schedule is far "
        "longer than this ten-minute one)",
        "",
        "| noise | test acc (ours, after (a)) | paper Table 1 | precision | recall | F1 | AUROC | time (s) | wall (s) "
        "| note |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    total = 0.0
    for r in results:
        case = r["case"]
        paper = PAPER_TABLE1.get((case["noise"], case["rate"]))
        row = next((x for x in r["rows"] if x["key"] == "clean"), None)
        label = f"{case['noise']} {case['rate']:.0%}"
        if row is None or row.get("error"):
            why = row["error"] if row else "not run"
            lines.append(f"| {label} | – | {_num(paper, 1)} | – | – | – | – | – | – | {why} |")
            continue
        mt = row["metrics"]
        acc = row.get("test_acc")
        total += row.get("wall_seconds") or 0.0
        lines.append(f"| {label} | {_num(acc * 100 if acc is not None else None, 1)} | {_num(paper, 1)} | "
                     f"{_num(mt.get('precision'))} | {_num(mt.get('recall'))} | {_num(mt.get('f1'))} | "
                     f"{_num(mt.get('auroc'))} | {_secs(row.get('seconds'))} | {_secs(row.get('wall_seconds'))} | "
                     f"{row.get('note', '')} |")
    lines += ["", f"Sum of the runs' wall times: {total:.0f} s; the whole invocation so far, data writing included: "
              f"{elapsed_s:.0f} s (limit 600 s).", "", DEFINITIONS, ""]
    return "\n".join(lines)
