"""The working size follows the images and the device (engine.data.working_size), and a run records it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from engine import config as config_mod
from engine.cli import main as cli_main
from engine.data.working_size import AUTO_SIZE, FLOOR, WorkingSize, native_side, resolve, working_size


@pytest.mark.parametrize(("native", "device", "size"), [
    (375, "cpu", 32),     # photos on a CPU: the measured best
    (375, "cuda", 96),    # photos on a GPU: the GPU cap
    (32, "cuda", 32),     # CIFAR on a GPU: never enlarged beyond its own size
    (50, "cuda", 48),     # in between: its own size, down to a multiple of 8
    (8, "cpu", FLOOR),    # 8 px digits: enlarged to the least the network takes
    (8, "cuda", FLOOR),
    (None, "cpu", 32),    # nothing readable: the device's cap
    (None, "cuda", 96),
    (375, "mps", 32),     # an unknown device is treated as a CPU
])
def test_the_rule(native, device, size) -> None:
    assert working_size(native, device) == size


def test_native_side_is_the_median_shorter_side_of_the_readable_headers(tmp_path: Path) -> None:
    paths = []
    for i, (w, h) in enumerate([(100, 60), (40, 80), (300, 200), (64, 64), (500, 20)]):
        Image.new("RGB", (w, h)).save(tmp_path / f"{i}.png")
        paths.append(f"{i}.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    assert native_side(tmp_path, paths + ["bad.png", "missing.png"]) == 60  # sides 60 40 200 64 20
    assert native_side(tmp_path, []) is None
    assert native_side(tmp_path, ["bad.png"]) is None
    # an even sample of the files, not the first ones
    assert native_side(tmp_path, paths, sampled=2) == 40  # files 0 and 4: sides 60 and 20, median 40


def test_resolve_says_why(tmp_path: Path) -> None:
    for i in range(3):
        Image.new("RGB", (120, 90)).save(tmp_path / f"{i}.jpg")
    chosen = resolve(tmp_path, ["0.jpg", "1.jpg", "2.jpg"], "cpu")
    assert chosen == WorkingSize(32, 90, "cpu")
    assert chosen.reason() == ("working size 32 px (the images' shorter side is about 90 px; the CPU's best "
                               "measured size is 32 px)")
    assert "enlarged to 32 px" in WorkingSize(32, 8, "cuda").reason()
    assert "not enlarged beyond their own size" in WorkingSize(48, 50, "cuda").reason()
    assert "no image size could be read" in WorkingSize(96, None, "cuda").reason()


def test_the_profiles_start_from_auto_and_validation_accepts_it() -> None:
    for device in ("cpu", "cuda"):
        assert config_mod.profile_for(device).data.image_size == AUTO_SIZE
    config_mod.validate(config_mod.profile_for("cpu"))
    with pytest.raises(config_mod.ConfigError, match="image_size must be between 8 and 512, got 4"):
        config_mod.with_overrides(config_mod.RunConfig(), {"data.image_size": 4})


def test_a_new_run_records_the_size_its_images_chose_and_a_rerun_asking_auto_is_the_same_run(tmp_path: Path) -> None:
    from conftest import write_pattern_folder

    data = write_pattern_folder(tmp_path / "data", per_class=6, size=40)
    run = tmp_path / "run"
    flags = ["--device", "cpu", "--pretrain-epochs", "1", "--epochs", "1", "--batch-size", "8", "--seed", "1",
             "--quiet", "--set", "embed.enabled=false"]
    assert cli_main(["fit", str(data), "--run-dir", str(run), *flags]) == 0
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["data"]["image_size"] == 32 and cfg["model"]["stem"] == "standard"
    events = [json.loads(line) for line in (run / "events.jsonl").read_text().splitlines()]
    size = [e for e in events if e.get("kind") == "size"]
    assert len(size) == 1 and size[0]["size"] == 32 and size[0]["native"] == 40
    assert size[0]["message"].startswith("working size 32 px (the images' shorter side is about 40 px")
    # the form sends data.image_size=0 again when it reruns a finished run: that is the run's own size
    assert cli_main(["fit", str(data), "--run-dir", str(run), *flags, "--set", "data.image_size=0"]) == 0
    # an explicit other size is another run
    assert cli_main(["fit", str(data), "--run-dir", str(run), *flags, "--image-size", "16"]) == 2
