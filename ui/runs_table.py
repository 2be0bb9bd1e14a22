"""The list of past runs and the comparison of two runs, as DataFrames (no Streamlit here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from engine.runs.atomic import read_json
from engine.runs.rundir import RunDir
from engine.runs.status import effective_state

HEADLINE_METRICS = ("precision", "recall", "f1", "auroc", "corrected_accuracy", "pseudo_label_accuracy")


def _json(path: Path) -> dict[str, Any]:
    data = read_json(path, default=None)
    return data if isinstance(data, dict) else {}


def run_summary(run_dir: Path) -> dict[str, Any]:
    """One row of the runs table: id, date, state, dataset, settings, flagged count, metrics."""
    run = RunDir(run_dir)
    status = run.read_status()
    config = _json(run.config)
    source = _json(run.source)
    split = _json(run.split)
    metrics = _json(run.metrics)
    pretrain = config.get("pretrain", {})
    classify = config.get("classify", {})
    launch = _json(run.launch)
    data = source.get("data") or launch.get("data") or ""
    return {
        "run": run.path.name,
        "date": (status.get("started_at") or "")[:16].replace("T", " "),
        "state": effective_state(run, status),
        "phase": status.get("phase", ""),
        "dataset": Path(data).name if data else "",
        "loss": classify.get("loss", ""),
        "pre-training": ("on" if pretrain.get("enabled") else "off") if pretrain else "",
        "epochs": _epochs(pretrain, classify),
        "flagged": split.get("n_flagged"),
        "images": split.get("n"),
        "F1": metrics.get("f1"),
        "accuracy": metrics.get("corrected_accuracy"),
    }


def _epochs(pretrain: dict[str, Any], classify: dict[str, Any]) -> str:
    if not classify:
        return ""
    pre = pretrain.get("epochs", 0) if pretrain.get("enabled") else 0
    return f"{pre} + {classify.get('warmup_epochs', 0)} + {classify.get('epochs', 0)}"


def runs_frame(run_dirs: list[Path]) -> pd.DataFrame:
    columns = ["run", "date", "state", "phase", "dataset", "loss", "pre-training", "epochs", "flagged", "images",
               "F1", "accuracy"]
    return pd.DataFrame([run_summary(p) for p in run_dirs], columns=columns)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"pretrain": {"epochs": 3}} -> {"pretrain.epochs": 3}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def settings_diff(run_a: Path, run_b: Path) -> pd.DataFrame:
    """The config keys whose values differ between two runs (plus the dataset)."""
    a = flatten(_json(RunDir(run_a).config))
    b = flatten(_json(RunDir(run_b).config))
    a["dataset"] = _json(RunDir(run_a).source).get("data")
    b["dataset"] = _json(RunDir(run_b).source).get("data")
    rows = [(k, _show(a.get(k)), _show(b.get(k))) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return pd.DataFrame(rows, columns=["setting", Path(run_a).name, Path(run_b).name])


def headline_table(run_dirs: list[Path]) -> pd.DataFrame:
    """Flag counts and detection metrics side by side (one column per run)."""
    data: dict[str, dict[str, Any]] = {}
    for run_dir in run_dirs:
        split = _json(RunDir(run_dir).split)
        metrics = _json(RunDir(run_dir).metrics)
        column: dict[str, Any] = {"images": split.get("n"), "flagged": split.get("n_flagged")}
        column.update({m: metrics.get(m) for m in HEADLINE_METRICS})
        data[Path(run_dir).name] = column
    return pd.DataFrame(data)


def _show(value: Any) -> str:
    return "" if value is None else str(value)
