"""`python -m engine scan | prepare | noise`: exit codes, the JSON report, human output, reproducible noise."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np

from engine.cli import main
from engine.data.cache import load_prepared

REPO = Path(__file__).resolve().parents[1]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "engine", *args], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_scan_json_subprocess_lists_skipped_files(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "data", per_class=2)
    (root / "cat" / "fake.jpg").write_text("text")
    (root / "notes.txt").write_text("x")
    proc = _run("scan", str(root), "--json")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # exactly one JSON object on stdout
    assert report["n_images"] == 4 and report["classes"] == ["cat", "dog"] and report["ignored"] == 1
    assert report["skipped"] == [{"path": "cat/fake.jpg", "reason": "not an image (unrecognised file format)"}]
    assert "torch" not in proc.stderr


def test_scan_unusable_data_subprocess_exit_2(tmp_path, make_image_folder):
    root = make_image_folder(tmp_path / "data", classes=("only",), per_class=2)
    proc = _run("scan", str(root))
    assert proc.returncode == 2 and proc.stdout == ""
    assert "training needs at least two classes" in proc.stderr


def test_scan_human_report(tmp_path, make_image_folder, capsys):
    root = make_image_folder(tmp_path / "data", classes=("cat", "dog"), per_class=3)
    (root / "dog" / "zero.png").write_bytes(b"")
    assert main(["scan", str(root)]) == 0
    out = capsys.readouterr().out
    assert "6 images in 2 classes" in out
    assert "  cat         3" in out and "  dog         3" in out
    assert "dog/zero.png: empty file" in out and "ignored 0 files" in out


def test_scan_json_errors_are_json_too(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["scan", str(tmp_path / "empty"), "--json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["error"].startswith("no usable images found")
    assert "no usable images found" in captured.err


def test_scan_zip_and_csv(tmp_path, make_image_folder, capsys):
    root = make_image_folder(tmp_path / "data", per_class=2)
    with zipfile.ZipFile(tmp_path / "d.zip", "w") as zf:
        for p in sorted(root.rglob("*.png")):
            zf.write(p, "top/" + p.relative_to(root).as_posix())
    assert main(["scan", str(tmp_path / "d.zip"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["counts"] == {"cat": 2, "dog": 2}
    (tmp_path / "m.csv").write_text("path,label\ncat/img_000.png,x\ndog/img_000.png,y\n")
    assert main(["scan", str(tmp_path / "m.csv"), "--root", str(root), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["classes"] == ["x", "y"]


def test_prepare_command(tmp_path, make_image_folder, capsys):
    root = make_image_folder(tmp_path / "data", per_class=3, size=12)
    out = tmp_path / "cache"
    assert main(["prepare", str(root), "--out", str(out), "--image-size", "8"]) == 0
    assert "prepared 6 images of 2 classes at 8x8 px" in capsys.readouterr().out
    assert load_prepared(out).images.shape == (6, 8, 8, 3)
    assert main(["prepare", str(root), "--out", str(out), "--image-size", "8"]) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["prepare", str(root), "--out", str(out), "--image-size", "0"]) == 2


def test_prepare_never_overwrites_a_users_files(tmp_path, make_image_folder, capsys):
    root = make_image_folder(tmp_path / "data", per_class=3, size=12)
    user = tmp_path / "mine"
    user.mkdir()
    (user / "manifest.csv").write_text("my own notes\n")
    (user / "report.txt").write_text("keep me\n")
    assert main(["prepare", str(root), "--out", str(user), "--image-size", "8"]) == 2
    assert "already holds other files (report.txt)" in capsys.readouterr().err
    assert (user / "manifest.csv").read_text() == "my own notes\n" and not (user / "images.npy").exists()
    assert main(["prepare", str(root), "--out", str(root / "cache"), "--image-size", "8"]) == 2
    assert "inside the data folder" in capsys.readouterr().err and not (root / "cache").exists()
    (tmp_path / "afile").write_text("x")
    assert main(["prepare", str(root), "--out", str(tmp_path / "afile"), "--image-size", "8"]) == 2
    assert "is a file" in capsys.readouterr().err


def test_noise_command_is_reproducible(tmp_path, make_image_folder, capsys):
    root = make_image_folder(tmp_path / "data", classes=("a", "b", "c"), per_class=10)
    args = ["noise", str(root), "--kind", "symmetric", "--rate", "0.4"]
    assert main([*args, "--out", str(tmp_path / "n1"), "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "12 of 30 labels changed (40.0%)" in out and "  a   40.0% of 10" in out
    assert main([*args, "--out", str(tmp_path / "n2"), "--seed", "1"]) == 0
    assert main([*args, "--out", str(tmp_path / "n3"), "--seed", "2"]) == 0
    same = [(tmp_path / n / "noise.csv").read_bytes() for n in ("n1", "n2", "n3")]
    assert same[0] == same[1] and same[0] != same[2]
    lines = same[0].decode().splitlines()
    assert lines[0] == "path,true_label,noisy_label" and len(lines) == 31


def test_noise_command_errors(tmp_path, make_image_folder, capsys):
    root = make_image_folder(tmp_path / "data", classes=("a", "b"), per_class=4)
    base = ["noise", str(root), "--seed", "0"]
    cases = [
        (["--out", str(tmp_path / "o1"), "--kind", "symmetric", "--rate", "1.0"], "--rate must be in [0, 1)"),
        (["--out", str(root / "inside"), "--kind", "symmetric", "--rate", "0.2"], "inside the data folder"),
        (["--out", str(tmp_path / "o2"), "--kind", "asymmetric", "--rate", "0.2"], "asymmetric noise needs --mapping"),
        (["--out", str(tmp_path / "o3"), "--kind", "pair", "--rate", "0.2", "--mapping", "cifar10"], "asymmetric only"),
        (["--out", str(tmp_path / "o4"), "--kind", "asymmetric", "--rate", "0.2", "--mapping", "cifar10"], "lacks"),
    ]
    for extra, message in cases:
        assert main([*base, *extra]) == 2, extra
        assert message in capsys.readouterr().err, message
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 5)) and not (root / "inside").exists()


def test_noise_command_with_mapping_file(tmp_path, make_image_folder, capsys):
    root = make_image_folder(tmp_path / "data", classes=("a", "b", "c"), per_class=10)
    (tmp_path / "map.json").write_text(json.dumps({"a": "c"}))
    out = tmp_path / "noisy"
    args = ["noise", str(root), "--out", str(out), "--kind", "asymmetric", "--rate", "0.5", "--mapping"]
    assert main([*args, str(tmp_path / "map.json")]) == 0
    rows = [line.split(",") for line in (out / "noise.csv").read_text().splitlines()[1:]]
    flipped = [r for r in rows if r[1] != r[2]]
    assert len(flipped) == 5 and all(r[1:] == ["a", "c"] for r in flipped)
    counts = np.unique([r[2] for r in rows], return_counts=True)
    assert dict(zip(counts[0].tolist(), counts[1].tolist(), strict=True)) == {"a": 5, "b": 10, "c": 15}
