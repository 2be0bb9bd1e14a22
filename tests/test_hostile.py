"""Hostile and careless input against every command, run as subprocesses (`python -m engine ...`).

Each case is a few lines of data for the harness in hostile_harness.py, which asserts the exit code, the
one-sentence message, no traceback, that every file that existed is byte-for-byte unchanged, and that
nothing was written outside the run or output folder. The unit-level intake, export and decision-store
attacks live in test_intake.py, test_cli_data.py, test_export.py and test_decisions.py; here the point is
what a user's script sees from the commands.

Cases that need a trained run share one tiny fit made once for the module (2 classes x 6 images of 16 px,
one epoch per stage, no map), copied into each case's scene. Run folders are CLeaN's: a folder the user
already has is refused with nothing in it touched, and a damaged run file is named with its repair.
"""

from __future__ import annotations

import json
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest
from hostile_harness import (
    Case,
    Scene,
    Snapshotter,
    Template,
    build_template,
    damage,
    fifo,
    folder,
    play,
    remove,
    steps,
    symlink,
    write,
)

pytestmark = pytest.mark.slow

FIT = ("fit", "{data}", "--run-dir", "{run}", "--device", "cpu", "--quiet")
REFIT = ("fit", "{data}", "--run-dir", "{run}", "--quiet")  # the shared run again, with its own settings
TINY_FIT = ("fit", "{data}", "--run-dir", "{out}", "--device", "cpu", "--quiet", "--pretrain-epochs", "1", "--epochs",
            "1", "--batch-size", "8", "--image-size", "16", "--set", "embed.enabled=false")
EXPORT = ("export", "{run}", "--out")


# ----------------------------------------------------------------------------- setups used by several cases




def foreign_store(scene: Scene) -> None:
    """Another program's SQLite database where the run keeps its decisions."""
    con = sqlite3.connect(scene.run / "decisions.sqlite")
    con.execute("CREATE TABLE invoices(id INTEGER PRIMARY KEY, total REAL)")
    con.execute("INSERT INTO invoices(total) VALUES (12.5)")
    con.commit()
    con.close()




def store_without_checks(action: str) -> object:
    """A store with our tables but no CHECK on `action` (an older or hand-edited one) holding `action`."""

    def make(scene: Scene) -> None:
        con = sqlite3.connect(scene.run / "decisions.sqlite")
        con.executescript("""
            CREATE TABLE decisions (path TEXT PRIMARY KEY, action TEXT NOT NULL, label TEXT,
                                    decided_at TEXT NOT NULL, source TEXT);
            CREATE TABLE decision_log (id INTEGER PRIMARY KEY AUTOINCREMENT, path TEXT NOT NULL, action TEXT,
                                       label TEXT, prev_action TEXT, prev_label TEXT, decided_at TEXT NOT NULL,
                                       source TEXT);
        """)
        con.execute("INSERT INTO decisions VALUES ('cat/img_000.png', ?, 'cat', '2026-01-01T00:00:00', 'hand')",
                    (action,))
        con.commit()
        con.close()

    return make




def foreign_checkpoint(scene: Scene) -> None:
    """A pickle that torch's weights_only loader refuses, where the pre-training checkpoint would be."""
    import collections

    import torch

    path = scene.out / "checkpoints" / "pretrain.pt"
    path.parent.mkdir(parents=True)
    torch.save({"net": collections.Counter(a=1), "note": "someone else's model"}, path)


def foreign_pickle(rel: str) -> object:
    """A pickle that torch's weights_only loader refuses, put in place of a run's checkpoint."""

    def make(scene: Scene) -> None:
        import fractions

        import torch

        path = scene.root / rel
        path.unlink()
        torch.save({"net": fractions.Fraction(1, 3), "stage": path.stem}, path)

    return make


def user_folder(*extra: object) -> object:
    """SCENE/out: a folder of the user's own (notes, a draft) plus `extra` setups, used as --run-dir."""
    return steps(write("out/notes.txt", "my notes\n"), *extra)


def exported_once(fmt: str) -> object:
    """An earlier export at SCENE/out/labels.<fmt> or SCENE/out/sorted, made by the command itself."""

    def make(scene: Scene) -> None:
        from engine.review.export import export_labels

        target = scene.out / ("sorted" if fmt == "folder" else f"labels.{fmt}")
        export_labels(scene.run, target, fmt)

    return make


def written_to(rel: str, *, contains: str) -> object:
    def check(scene: Scene, proc: subprocess.CompletedProcess) -> None:
        assert contains in (scene.root / rel).read_text(encoding="utf-8")

    return check


def still_a_fifo(rel: str) -> object:
    def check(scene: Scene, proc: subprocess.CompletedProcess) -> None:
        assert stat.S_ISFIFO((scene.root / rel).lstat().st_mode)

    return check


def json_error(scene: Scene, proc: subprocess.CompletedProcess) -> None:
    assert list(json.loads(proc.stdout)) == ["error"]  # one JSON object on stdout, as for a good report


def long_names(scene: Scene) -> None:
    """Two more images, both named with the file system's longest name (255 bytes), in two folders of the
    data and both labelled cat in the run: the folder export puts them in one class folder."""
    import os
    import shutil

    name = "x" * (os.pathconf(scene.data, "PC_NAME_MAX") - 4) + ".png"
    for cls in ("cat", "dog"):
        shutil.copy2(scene.data / cls / "img_000.png", scene.data / cls / name)
    samples = (scene.run / "samples.csv").read_text().splitlines()
    first = samples[1].split(",")
    rows = [",".join([first[0], first[1], f"{cls}/{name}", "cat", *first[4:]]) for cls in ("cat", "dog")]
    write("run/samples.csv", "\n".join([*samples, *rows]) + "\n")(scene)




def copy_data(rel: str) -> object:
    def make(scene: Scene) -> None:
        import shutil

        shutil.copytree(scene.data, scene.root / rel)

    return make




# ----------------------------------------------------------------------------- the cases

SCAN = [
    Case("scan-missing", ("scan", "{scene}/nothing"), "nothing does not exist"),
    Case("scan-fifo-csv", ("scan", "{scene}/data.csv"), "data.csv is not a regular file", setup=fifo("data.csv"),
         timeout=20),
    Case("scan-link-to-fifo", ("scan", "{scene}/link.csv"), "link.csv is not a regular file",
         setup=steps(fifo("pipe"), symlink("link.csv", "{scene}/pipe")), timeout=20),
    Case("scan-device", ("scan", "/dev/zero", "--json"), "/dev/zero is not a regular file", timeout=20,
         check=json_error),
]

PREPARE = [
    Case("prepare-huge-size", ("prepare", "{data}", "--out", "{out}", "--image-size", "100000"),
         "--image-size must be between 8 and 512, got 100000", timeout=30),
    Case("prepare-tiny-size", ("prepare", "{data}", "--out", "{out}", "--image-size", "7"),
         "--image-size must be between 8 and 512, got 7"),
    Case("prepare-negative-size", ("prepare", "{data}", "--out", "{out}", "--image-size", "-32"),
         "--image-size must be between 8 and 512, got -32"),
    Case("prepare-size-not-a-number", ("prepare", "{data}", "--out", "{out}", "--image-size", "big"),
         "argument --image-size: invalid int value: 'big'"),
    Case("prepare-out-is-a-fifo", ("prepare", "{data}", "--out", "{out}"), "is a file; give a folder",
         setup=fifo("out"), timeout=20),
    Case("prepare-fifo-data", ("prepare", "{scene}/d.csv", "--out", "{out}"), "d.csv is not a regular file",
         setup=fifo("d.csv"), timeout=20),
]

NOISE_ASYM = ("noise", "{data}", "--out", "{out}", "--kind", "asymmetric", "--rate", "0.2", "--mapping")
NOISE = [
    Case("noise-rate-nan", ("noise", "{data}", "--out", "{out}", "--kind", "symmetric", "--rate", "nan"),
         "--rate must be in [0, 1), got nan"),
    Case("noise-out-not-empty", ("noise", "{data}", "--out", "{out}", "--kind", "pair", "--rate", "0.2"),
         "already exists and is not empty", setup=write("out/mine.txt", "mine\n")),
    Case("noise-out-is-a-file", ("noise", "{data}", "--out", "{scene}/afile", "--kind", "pair", "--rate", "0.2"),
         "already exists and is not empty", setup=write("afile", "mine\n")),
    Case("noise-mapping-fifo", (*NOISE_ASYM, "{scene}/map.csv"), "--mapping", setup=fifo("map.csv"), timeout=20),
    Case("noise-mapping-deep-json", (*NOISE_ASYM, "{scene}/map.json"), "is not valid JSON (nested too deeply)",
         setup=write("map.json", "[" * 200_000)),
    Case("noise-mapping-huge", (*NOISE_ASYM, "{scene}/map.csv"), "more than the limit of 1048576 bytes",
         setup=write("map.csv", "source,target\n" + "cat,dog\n" * 200_000)),
    Case("noise-mapping-field-too-large", (*NOISE_ASYM, "{scene}/map.csv"), "is not a readable CSV file",
         setup=write("map.csv", 'source,target\n"' + "c" * 200_000 + '",dog\n')),
]

FIT_CASES = [
    Case("fit-huge-image-size", (*FIT, "--image-size", "100000"), "image_size must be between 8 and 512, got 100000"),
    Case("fit-batch-size-one", (*FIT, "--batch-size", "1"), "batch size must be >= 2, got 1"),
    Case("fit-set-unknown-key", (*FIT, "--set", "pretrain.speed=9"), "unknown config key: pretrain.speed"),
    Case("fit-set-no-equals", (*FIT, "--set", "seed"), "--set expects KEY=VALUE, got 'seed'"),
    Case("fit-set-bad-seed", (*FIT, "--set", "seed=-1"), "seed must be between 0 and 4294967295, got -1"),
    Case("fit-set-wrong-type", (*FIT, "--set", "pretrain.epochs=many"), "pretrain.epochs must be an integer"),
    Case("fit-config-fifo", (*FIT, "--config", "{scene}/c.json"), "config file {scene}/c.json is not a regular file",
         setup=fifo("c.json"), timeout=30),
    Case("fit-config-device", (*FIT, "--config", "/dev/zero"), "config file /dev/zero is not a regular file",
         timeout=30),
    Case("fit-config-deep", (*FIT, "--config", "{scene}/c.json"), "is not readable JSON (nested too deeply)",
         setup=write("c.json", "[" * 200_000)),
    Case("fit-config-huge", (*FIT, "--config", "{scene}/c.json"), "more than the limit of 1048576 bytes",
         setup=write("c.json", "{" + " " * 2_000_000 + "}")),
    Case("fit-config-unknown-key", (*FIT, "--config", "{scene}/c.json"), "unknown config key(s): warp",
         setup=write("c.json", '{"warp": 9}')),
    Case("fit-config-not-an-object", (*FIT, "--config", "{scene}/c.json"), "must be an object",
         setup=write("c.json", "[1, 2, 3]")),
    # Refused at once, before the run folder exists (writes=()): not after the prepare stage.
    Case("fit-truth-fifo", (*FIT, "--truth", "{scene}/t.csv"), "truth file {scene}/t.csv is not a regular file",
         setup=fifo("t.csv"), timeout=60, writes=()),
    Case("fit-test-fifo", (*FIT, "--test", "{scene}/test.zip"), "test.zip is not a regular file",
         setup=fifo("test.zip"), timeout=60, writes=()),
    Case("fit-truth-missing", (*FIT, "--truth", "{scene}/t.csv"), "truth file {scene}/t.csv does not exist",
         writes=()),
    Case("fit-resume-nothing", (*FIT, "--resume"), "nothing to resume"),
    Case("fit-run-on-other-data", ("fit", "{scene}/other", "--run-dir", "{run}", "--quiet"), "use a new --run-dir",
         run=True, setup=copy_data("other")),
    Case("fit-run-other-settings", (*REFIT, "--epochs", "5"), "already holds a run with other settings", run=True),
    Case("fit-run-config-garbage", REFIT, "config.json is not readable JSON", run=True,
         setup=damage("run/config.json", "garbage")),
    Case("fit-run-config-half", REFIT, "config.json is not readable JSON", run=True,
         setup=damage("run/config.json", "half")),
    # A folder the user already has, named as --run-dir: refused, and nothing of theirs touched (not their
    # .draft.tmp by the temp-file clean-up, not their status.json or data/manifest.csv, and their checkpoint is
    # not taken for a finished stage).
    Case("fit-user-folder", TINY_FIT, "{out}", writes=(), timeout=180, setup=user_folder(
        write("out/.draft.tmp", "my draft\n"), write("out/samples.csv", "path,label\nmine.png,x\n"),
        write("out/status.json", '{"mine": true}'), write("out/data/manifest.csv", "index,id,path,label\n"),
        foreign_checkpoint)),
    Case("fit-run-dir-is-a-file", ("fit", "{data}", "--run-dir", "{scene}/afile", "--quiet"),
         "--run-dir {scene}/afile is a file, not a folder", setup=write("afile", "mine\n"), writes=()),
    Case("fit-folder-with-look-alike-files", TINY_FIT, "{out} is a folder CLeaN did not make", writes=(),
         setup=user_folder(write("out/config.json", "{}"), write("out/status.json", '{"state": "done"}'))),
    Case("fit-run-of-a-newer-format", REFIT, "is a run of a newer CLeaN (run format 99", run=True, changes=(),
         setup=write("run/.clean-run", '{"clean_run": 99}')),
    # A damaged run file: exit 2 and one sentence that names the file and the repair, nothing changed (not
    # even the journal: a command typed in a shell records nothing it refused); a damaged cache is not a
    # change of the images.
    Case("fit-damaged-cache", REFIT, "data/images.npy is damaged", run=True,
         setup=damage("run/data/images.npy", "half"), forbid=("changed since",), timeout=120, changes=()),
    Case("fit-damaged-intake", REFIT, "data/intake.json is damaged", run=True,
         setup=damage("run/data/intake.json", "half"), forbid=("changed since",), timeout=120, changes=()),
    Case("fit-damaged-status", REFIT, "status.json is damaged (not UTF-8 text): `python -m engine fit", run=True,
         setup=damage("run/status.json", "garbage"), timeout=120, changes=()),
    Case("fit-fifo-status", REFIT, "status.json is damaged (a named pipe, not a regular file)", run=True,
         setup=steps(remove("run/status.json"), fifo("run/status.json")), timeout=120, changes=()),
    Case("fit-damaged-train-checkpoint", REFIT, "checkpoints/train.pt is damaged (not a complete checkpoint "
         "archive)", run=True, setup=damage("run/checkpoints/train.pt", "half"), timeout=120, changes=()),
    Case("fit-foreign-checkpoint-in-run", REFIT, "checkpoints/warmup.pt is damaged (it holds objects a CLeaN "
         "checkpoint never holds)", run=True, setup=foreign_pickle("run/checkpoints/warmup.pt"), timeout=120,
         changes=()),
    Case("fit-damaged-loss-history", REFIT, "checkpoints/train_losses.npz is damaged", run=True,
         setup=damage("run/checkpoints/train_losses.npz", "garbage"), timeout=120, changes=()),
]

FINETUNE = [
    Case("finetune-not-a-run", ("finetune", "{out}"), "is not a fitted run", setup=folder("out")),
    Case("finetune-set-unknown-key", ("finetune", "{run}", "--set", "finetune.speed=2"),
         "unknown config key: finetune.speed", run=True),
    Case("finetune-change-network", ("finetune", "{run}", "--set", "model.head_hidden=64"),
         "the network of a fitted run cannot change", run=True),
    Case("finetune-config-garbage", ("finetune", "{run}"), "config.json is not readable JSON", run=True,
         setup=damage("run/config.json", "garbage")),
    Case("finetune-damaged-train-checkpoint", ("finetune", "{run}", "--quiet"), "train.pt", run=True,
         setup=damage("run/checkpoints/train.pt", "garbage"), timeout=120),
    Case("finetune-damaged-predictions", ("finetune", "{run}", "--quiet"), "predictions.npz", run=True,
         setup=damage("run/predictions.npz", "half"), timeout=120),
    Case("finetune-resume-cannot-redo-phase-a", ("finetune", "{run}", "--resume", "--quiet"),
         "checkpoints/pretrain.pt is damaged", run=True, setup=damage("run/checkpoints/pretrain.pt", "garbage"),
         timeout=120, changes=()),
    Case("finetune-user-folder", ("finetune", "{out}"), "{out} is a folder CLeaN did not make", writes=(),
         setup=user_folder(write("out/config.json", "{}"), write("out/source.json", "{}"))),
    Case("finetune-truth-fifo", ("finetune", "{run}", "--truth", "{scene}/t.csv"),
         "truth file {scene}/t.csv is not a regular file", run=True, setup=fifo("t.csv"), timeout=60, changes=()),
]

STORE_CHANGES = ("run/decisions.sqlite",)  # opening a valid store for reading may write to it (WAL, schema)
EXPORT_CASES = [
    Case("export-existing-file", (*EXPORT, "{out}/labels.csv"), "already exists; give a new file name, or add "
         "--overwrite", run=True, setup=write("out/labels.csv", "my hand-made sheet\n")),
    Case("export-existing-json", (*EXPORT, "{out}/l.json", "--format", "json"), "already exists", run=True,
         setup=write("out/l.json", "[]\n")),
    Case("export-overwrite-replaces", (*EXPORT, "{out}/labels.csv", "--overwrite"), "wrote {out}/labels.csv", code=0,
         run=True, setup=exported_once("csv"), changes=("out/labels.csv",),
         check=written_to("out/labels.csv", contains="path,label,original_label,status")),
    Case("export-dev-null", (*EXPORT, "/dev/null"), "/dev/null is a character device, not a regular file", run=True),
    Case("export-dev-null-overwrite", (*EXPORT, "/dev/null", "--overwrite"), "/dev/null is a character device",
         run=True),
    Case("export-fifo-overwrite", (*EXPORT, "{out}/p.csv", "--overwrite"), "p.csv is a named pipe, not a regular file",
         run=True, setup=fifo("out/p.csv"), timeout=20, check=still_a_fifo("out/p.csv")),
    Case("export-symlink", (*EXPORT, "{out}/link.csv", "--overwrite"), "link.csv is a symbolic link", run=True,
         setup=steps(write("mine.csv", "mine\n"), symlink("out/link.csv", "{scene}/mine.csv"))),
    Case("export-out-is-a-folder", (*EXPORT, "{out}"), "is a folder; give a file name such as labels.csv", run=True,
         setup=folder("out")),
    Case("export-folder-over-user-folder", (*EXPORT, "{out}", "--format", "folder", "--overwrite"),
         "is not an earlier folder export (no labels.csv)", run=True, setup=write("out/mine.txt", "mine\n")),
    Case("export-folder-over-edited-export", (*EXPORT, "{out}/sorted", "--format", "folder", "--overwrite"),
         "is not an earlier folder export (cat/notes.txt is not in its labels.csv)", run=True,
         setup=steps(exported_once("folder"), write("out/sorted/cat/notes.txt", "mine\n"))),
    Case("export-folder-not-empty", (*EXPORT, "{out}", "--format", "folder"), "already exists and is not an empty "
         "folder", run=True, setup=write("out/mine.txt", "mine\n")),
    Case("export-folder-over-a-file", (*EXPORT, "{out}/sorted", "--format", "folder", "--overwrite"),
         "already exists and is not an empty folder", run=True, setup=write("out/sorted", "mine\n")),
    Case("export-folder-overwrite-earlier", (*EXPORT, "{out}/sorted", "--format", "folder", "--overwrite"),
         "wrote {out}/sorted", code=0, run=True, setup=exported_once("folder"),
         changes=("out/sorted", "out/sorted/labels.csv", "out/sorted/cat", "out/sorted/dog"),
         check=written_to("out/sorted/labels.csv", contains="path,label,source_path")),
    Case("export-folder-long-names", (*EXPORT, "{out}/sorted", "--format", "folder"), "wrote {out}/sorted", code=0,
         run=True, setup=long_names, forbid=("File name too long",)),
    Case("export-no-samples", (*EXPORT, "{out}/l.csv"), "has no samples.csv yet", run=True,
         setup=remove("run/samples.csv")),
    Case("export-foreign-store", (*EXPORT, "{out}/l.csv"), "is not a CLeaN decision store (it holds other tables",
         run=True, setup=foreign_store),
    Case("export-store-is-a-fifo", (*EXPORT, "{out}/l.csv"), "is not a CLeaN decision store (it is not a regular "
         "file)", run=True, setup=fifo("run/decisions.sqlite"), timeout=20),
    Case("export-store-unknown-action", (*EXPORT, "{out}/l.csv"), "has unknown action 'maybe'", run=True,
         setup=store_without_checks("maybe"), changes=STORE_CHANGES),
    Case("export-source-gone", (*EXPORT, "{out}/sorted", "--format", "folder"), "source images are not available",
         run=True, setup=remove("data")),
    Case("export-garbage-samples", (*EXPORT, "{out}/l.csv"), "samples.csv", run=True,
         setup=damage("run/samples.csv", "garbage")),
    Case("export-half-samples", (*EXPORT, "{out}/l.csv"), "samples.csv", run=True,
         setup=damage("run/samples.csv", "half")),
    Case("export-fifo-samples", (*EXPORT, "{out}/l.csv"), "samples.csv is damaged (a named pipe", run=True,
         setup=steps(remove("run/samples.csv"), fifo("run/samples.csv")), timeout=20),
    Case("export-damaged-source", (*EXPORT, "{out}/l.csv"), "source.json is damaged", run=True,
         setup=damage("run/source.json", "garbage")),
]

# `status` is how a script asks about a run: a damaged run file is reported there, not read as "no run".
STATUS = [
    Case("status-not-a-run", ("status", "{out}"), "holds no run", setup=folder("out")),
    Case("status-done", ("status", "{run}"), "{run}: done", code=0, run=True, changes=()),
    Case("status-json-done", ("status", "{run}", "--json"), '"effective_state": "done"', code=0, run=True, changes=()),
    Case("status-garbage-status", ("status", "{run}"), "status.json", run=True,
         setup=damage("run/status.json", "garbage"), changes=()),
    Case("status-deep-status", ("status", "{run}"), "status.json", run=True,
         setup=write("run/status.json", "[" * 200_000), changes=()),
    Case("status-fifo-status", ("status", "{run}"), "status.json", run=True,
         setup=steps(remove("run/status.json"), fifo("run/status.json")), changes=(), timeout=10),
    Case("status-garbage-split", ("status", "{run}"), "split.json", run=True,
         setup=damage("run/split.json", "garbage"), changes=()),
    Case("status-garbage-umap", ("status", "{run}"), "umap.npy", run=True,
         setup=write("run/umap.npy", b"\x93NUMPY garbage"), changes=()),
    Case("status-damaged-config", ("status", "{run}"), "config.json is not readable JSON", run=True,
         setup=damage("run/config.json", "half"), changes=()),
    Case("status-garbage-checkpoint", ("status", "{run}"), "checkpoints/pretrain.pt is damaged", run=True,
         setup=damage("run/checkpoints/pretrain.pt", "garbage"), changes=()),
    Case("status-half-predictions", ("status", "{run}"), "predictions.npz is damaged", run=True,
         setup=damage("run/predictions.npz", "half"), changes=()),
    Case("status-json-garbage-events", ("status", "{run}", "--json"), '"effective_state": "done"', code=0,
         run=True, setup=write("run/events.jsonl", bytes(range(7, 251)) * 16), changes=()),
    Case("status-fifo-lock", ("status", "{run}"), "{run}: done", code=0, run=True, timeout=20, changes=(),
         setup=steps(remove("run/.worker.lock"), fifo("run/.worker.lock"))),
]

DEVICES = [
    Case("devices-text", ("devices",), "default device:", code=0, writes=()),
    Case("devices-unknown-flag", ("devices", "--gpus", "9"), "unrecognized arguments: --gpus 9", writes=()),
    Case("no-command", (), "the following arguments are required: command", writes=()),
    Case("unknown-command", ("train",), "invalid choice: 'train'", writes=()),
]

CASES = [*SCAN, *PREPARE, *NOISE, *FIT_CASES, *FINETUNE, *EXPORT_CASES, *STATUS, *DEVICES]


def _param(case: Case | pytest.param) -> pytest.param:
    return case if not isinstance(case, Case) else pytest.param(case, id=case.id)


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """The dataset every scene starts from."""
    return build_template(tmp_path_factory.mktemp("hostile-data"), fitted=False)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory) -> Template:
    """The dataset and the one shared fitted run (made once, on first use)."""
    return build_template(tmp_path_factory.mktemp("hostile-run"), fitted=True)


@pytest.fixture(scope="module")
def snapshots() -> Snapshotter:
    return Snapshotter()


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_hostile_input(case: Case, snapshots: Snapshotter, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    template = request.getfixturevalue("fitted" if case.run else "plain")
    play(case, tmp_path / "scene", template, snapshots)


def test_the_suite_covers_every_command_and_sixty_cases() -> None:
    cases = [c.values[0] if not isinstance(c, Case) else c for c in CASES]
    commands = {c.argv[0] for c in cases if c.argv}
    assert commands >= {"scan", "prepare", "noise", "fit", "finetune", "export", "status", "devices"}
    assert len(cases) >= 60 and len({c.id for c in cases}) == len(cases)
