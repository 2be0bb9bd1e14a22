"""Shared test fixtures. Every data set is written on the fly into tmp_path: tests never read /work/shared
or the bundled sample_data as input (only test_sample_data checks the bundled files themselves)."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# ----------------------------------------------------------------------------- the workspace


@pytest.fixture(scope="session", autouse=True)
def _session_workspace(tmp_path_factory: pytest.TempPathFactory):
    """No test touches the repository's workspace/ (its decision memory above all): CLEAN_WORKSPACE points at
    a temporary folder from the start of the session, so module-scoped fixtures and the commands they run
    in subprocesses see it too."""
    import os

    before = os.environ.get("CLEAN_WORKSPACE")
    os.environ["CLEAN_WORKSPACE"] = str(tmp_path_factory.mktemp("session-workspace"))
    yield
    if before is None:
        os.environ.pop("CLEAN_WORKSPACE", None)
    else:
        os.environ["CLEAN_WORKSPACE"] = before


@pytest.fixture(autouse=True)
def _test_workspace(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> Path:
    """... and each test its own (outside its tmp_path, which some tests compare before and after a command):
    one test's remembered decisions never reach another's runs."""
    ws = tmp_path_factory.mktemp("workspace")
    monkeypatch.setenv("CLEAN_WORKSPACE", str(ws))
    return ws


# ----------------------------------------------------------------------------- image folders


def class_colour(class_index: int, image_index: int) -> tuple[int, int, int]:
    """A distinct, known RGB colour per (class, image), so tests can check decoded pixels."""
    return ((40 * class_index + 20) % 256, (7 * image_index + 30) % 256, (90 + 50 * class_index) % 256)


def write_image_folder(
    root: Path,
    *,
    classes: Sequence[str] = ("cat", "dog"),
    per_class: int = 4,
    size: int = 16,
    ext: str = ".png",
) -> Path:
    """Write `per_class` solid-colour RGB images of `size` x `size` into root/<class>/img_<j>.<ext>."""
    root = Path(root)
    for ci, name in enumerate(classes):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            Image.new("RGB", (size, size), class_colour(ci, j)).save(folder / f"img_{j:03d}{ext}")
    return root


@pytest.fixture
def make_image_folder() -> Callable[..., Path]:
    """Factory: make_image_folder(tmp_path / "data", classes=("a", "b"), per_class=4, size=16, ext=".png")."""
    return write_image_folder


# ----------------------------------------------------------------------------- hand-made files


def write_png_header(path: Path, width: int, height: int) -> Path:
    """A valid PNG signature + IHDR claiming width x height (8-bit grey) with almost no data.

    Opening it costs nothing, decoding would need width * height bytes: a decompression bomb.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    body = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    Path(path).write_bytes(body)
    return Path(path)


@pytest.fixture
def make_bomb_png() -> Callable[[Path, int, int], Path]:
    """Factory: make_bomb_png(path, width, height) writes a tiny PNG that claims a huge size."""
    return write_png_header


def write_truncated(path: Path, fmt: str = "PNG", size: tuple[int, int] = (64, 48)) -> Path:
    """A real image of random pixels, cut to half its bytes."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt)
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: len(data) // 2])
    return Path(path)


@pytest.fixture
def make_truncated() -> Callable[..., Path]:
    """Factory: make_truncated(path, fmt="PNG"|"JPEG") writes an image cut in half."""
    return write_truncated


# ----------------------------------------------------------------------------- app: workspaces, fake runs, fake jobs


@pytest.fixture
def app_workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty CLEAN_WORKSPACE (with runs/) for the app; the app reads the variable on every rerun."""
    ws = tmp_path / "workspace"
    (ws / "runs").mkdir(parents=True)
    monkeypatch.setenv("CLEAN_WORKSPACE", str(ws))
    return ws


@pytest.fixture
def fake_jobs(monkeypatch: pytest.MonkeyPatch):
    """engine.runs.jobs' start/stop/resume/devices replaced by a recorder: app tests never train."""
    from fixtures_runs import install_fake_jobs

    return install_fake_jobs(monkeypatch)


@pytest.fixture
def fake_run(app_workspace: Path, fake_jobs):
    """A finished phase-(a) run (30 tiny PNGs in 3 classes, 9 flagged) in the app workspace."""
    from fixtures_runs import write_fake_run

    return write_fake_run(app_workspace / "runs")


# ----------------------------------------------------------------------------- training: a tiny learnable, noisy folder


def write_pattern_folder(root: Path, *, per_class: int = 12, size: int = 16, flip_every: int = 4, seed: int = 0) -> Path:
    """Three learnable classes (horizontal stripes, vertical stripes, checkerboard, with pixel noise),
    every `flip_every`-th image filed under the next class, and a truth.csv (path,true_label,given_label)."""
    rng = np.random.default_rng(seed)
    classes = ("checker", "horizontal", "vertical")
    yy, xx = np.mgrid[0:size, 0:size]
    patterns = {"horizontal": (yy // 2) % 2, "vertical": (xx // 2) % 2, "checker": ((yy // 2) + (xx // 2)) % 2}
    rows = ["path,true_label,given_label"]
    for ci, name in enumerate(classes):
        for j in range(per_class):
            pixels = patterns[name] * 180 + rng.integers(0, 60, (size, size))
            given = classes[(ci + 1) % 3] if j % flip_every == 0 else name
            (root / given).mkdir(parents=True, exist_ok=True)
            rel = f"{given}/{name}_{j:03d}.png"
            Image.fromarray(np.stack([pixels] * 3, -1).astype(np.uint8)).save(root / rel)
            rows.append(f"{rel},{name},{given}")
    (root / "truth.csv").write_text("\n".join(rows) + "\n")
    return root


@pytest.fixture
def pattern_folder(tmp_path: Path) -> Path:
    return write_pattern_folder(tmp_path / "patterns")


# ----------------------------------------------------------------------------- GPU tests

def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without a CUDA GPU the `gpu` tests are deselected, not skipped: they are bench/gpu_check.sh's, run on
    a GPU machine (where nvidia-smi exists), and a CPU run has nothing to say about them. bench/gpu_check.py's
    CPU rehearsal sets CLEAN_KEEP_GPU_TESTS to collect them (each then skips itself)."""
    import os
    import shutil

    if shutil.which("nvidia-smi") or os.environ.get("CLEAN_KEEP_GPU_TESTS"):
        return
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        config.hook.pytest_deselected(items=gpu)
        items[:] = [item for item in items if not item.get_closest_marker("gpu")]
