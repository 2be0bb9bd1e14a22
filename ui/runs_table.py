"""The list of past runs and the comparison of two runs, as DataFrames (no Streamlit here)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from engine.runs.atomic import read_json
from engine.runs.rundir import RunDir
from engine.runs.status import effective_state
from ui import train_form, wording

MISSING = "–"  # what an empty cell shows (a run still training has no numbers yet)
COLUMNS = ("run", "date", "state", "phase", "dataset", "loss", "pre-training", "epochs", "flagged", "images", "F1",
           "accuracy")


def _json(path: Path) -> dict[str, Any]:
    data = read_json(path, default=None)
    return data if isinstance(data, dict) else {}


def run_settings(run: RunDir) -> dict[str, Any]:
    """The run's settings as dotted keys: config.json, or before the worker wrote it, the launch command's."""
    config = _json(run.config)
    if config:
        return flatten(config)
    return train_form.launched_settings(_json(run.launch).get("command") or [])


def run_summary(run_dir: Path) -> dict[str, Any]:
    """One row of the runs table: id, date, state, dataset, settings, flagged count, metrics (None = unknown)."""
    run = RunDir(run_dir)
    status = run.read_status()
    settings = run_settings(run)
    launch = _json(run.launch)
    data = _json(run.source).get("data") or launch.get("data") or ""
    split = _json(run.split)
    metrics = _json(run.metrics)
    started = status.get("started_at") or launch.get("at") or ""
    pretrain = settings.get("pretrain.enabled")
    return {
        "run": run.path.name,
        "date": started[:16].replace("T", " ") or None,
        "state": effective_state(run, status) if status else "new",
        "phase": status.get("phase") or launch.get("phase"),
        "dataset": Path(data).name if data else None,
        "loss": settings.get("classify.loss"),
        "pre-training": None if pretrain is None else "on" if pretrain else "off",
        "epochs": _epochs(settings),
        "flagged": split.get("n_flagged"),
        "images": split.get("n"),
        "F1": metrics.get("f1"),
        "accuracy": metrics.get("corrected_accuracy"),
    }


def _epochs(settings: dict[str, Any]) -> str | None:
    """'pre-training + warm-up + classifier' epochs; a part the settings do not name shows as a dash."""
    parts = [0 if settings.get("pretrain.enabled") is False else settings.get("pretrain.epochs"),
             settings.get("classify.warmup_epochs"), settings.get("classify.epochs")]
    if all(p is None for p in parts):
        return None
    return " + ".join(MISSING if p is None else str(p) for p in parts)


def runs_frame(run_dirs: list[Path]) -> pd.DataFrame:
    """The past runs, typed: counts as nullable integers, metrics as floats (None/NaN where unknown)."""
    frame = pd.DataFrame([run_summary(p) for p in run_dirs], columns=list(COLUMNS))
    return frame.astype({"flagged": "Int64", "images": "Int64", "F1": "float64", "accuracy": "float64"})


def shown(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` as the page shows it: a dash in every empty cell, counts whole, metrics with three decimals.

    The cells themselves, not a Styler's display values: the browser's table prints "None" for an empty
    cell whatever a Styler says.
    """
    return frame.map(cell_text)


def cell_text(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return MISSING
    if isinstance(value, float):
        return f"{value:.3f}"
    return value


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
    a = run_settings(RunDir(run_a))
    b = run_settings(RunDir(run_b))
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
        column.update({name: metrics.get(m) for m, name in wording.METRIC_NAMES.items()})
        data[Path(run_dir).name] = column
    return pd.DataFrame(data, dtype=object)  # counts stay whole numbers next to the metrics


def _show(value: Any) -> str:
    return MISSING if value is None else str(value)
