"""The bundled sample_data/ is exactly what sample_data/build.py writes, and its truth.csv is honest."""

from __future__ import annotations

import csv
import hashlib
import runpy
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data"


def _hashes(root: Path) -> dict[str, str]:
    files = [p for p in root.rglob("*") if p.is_file() and (p.suffix == ".png" or p.name == "truth.csv")]
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def test_rebuild_is_byte_identical(tmp_path):
    build = runpy.run_path(str(SAMPLE / "build.py"))["build"]  # run_path: no __pycache__ in sample_data
    build(tmp_path / "rebuilt")
    committed = _hashes(SAMPLE)
    assert len(committed) == 1797 + 1
    assert _hashes(tmp_path / "rebuilt") == committed


def test_truth_matches_folders_and_about_20_percent_is_wrong():
    with open(SAMPLE / "truth.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1797 and list(rows[0]) == ["path", "true_label", "given_label"]
    assert all(r["path"].split("/")[0] == r["given_label"] for r in rows)
    assert all((SAMPLE / r["path"]).is_file() for r in rows)
    wrong = sum(r["true_label"] != r["given_label"] for r in rows)
    assert 0.18 <= wrong / len(rows) <= 0.21  # floor(0.2 * n) of every digit: 355 of 1797
    assert {r["given_label"] for r in rows} == {str(d) for d in range(10)}
