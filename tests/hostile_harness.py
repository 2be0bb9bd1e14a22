"""Harness of the hostile-input suite (tests/test_hostile.py): a scene on disk, one `python -m engine`
command run the way a user's script runs it, and the checks every case makes.

A scene is one folder that holds everything a case may touch:

    SCENE/data/   a small class-folder dataset (2 classes x 6 images of 16 px)
    SCENE/run/    a copy of one fitted run on that data, for the cases that need one
    SCENE/out/    where outputs are asked for (absent unless the case makes it)
    SCENE/tmp/    the command's TMPDIR: must be left as it was found
    SCENE/cwd/    the command's working directory: must stay empty

A case is data (`Case`): the arguments, with {data} {run} {out} {scene} standing for those paths, the exit
code, a substring of the one error sentence, and a setup that adds the hostile part. `play` builds the
scene, hashes every entry in it, runs the command and checks: the exit code; exactly one `error:` line,
holding the message (or, for exit 0, the message on stdout); no traceback; no forbidden text (torch's
advice to load with weights_only=False, in every case); every entry that existed before is unchanged
byte for byte (files, links, pipes, folders); new entries only inside the folders the case allows.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ALWAYS_FORBIDDEN = ("weights_only=False",)
# The run's own journal: a worker records every attempt there, refused or not.
RUN_JOURNAL = ("run/status.json", "run/events.jsonl")
_LINK_AT_LEAST = 1 << 20  # template files this large (checkpoints) are hard-linked into a scene, not copied


@dataclass(frozen=True)
class Scene:
    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def cwd(self) -> Path:
        return self.root / "cwd"

    def fill(self, text: str) -> str:
        """`text` with {data} {run} {out} {scene} replaced by this scene's paths."""
        for key, value in (("data", self.data), ("run", self.run), ("out", self.out), ("scene", self.root)):
            text = text.replace("{" + key + "}", str(value))
        return text


Setup = Callable[[Scene], None]
Check = Callable[[Scene, subprocess.CompletedProcess], None]


@dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    message: str  # in the one `error:` line (exit != 0) or on stdout (exit 0); placeholders as in argv
    code: int = 2
    setup: Setup | None = None
    run: bool = False  # the scene starts with a copy of the shared fitted run
    writes: tuple[str, ...] = ("run", "out")  # scene folders where new entries may appear
    changes: tuple[str, ...] | None = None  # pre-existing entries that may change (default: the run's journal)
    forbid: tuple[str, ...] = ()
    timeout: float = 90.0
    check: Check | None = None  # more assertions on the outcome


@dataclass(frozen=True)
class Template:
    """The shared starting point of every scene: the dataset, and (when built) a fitted run on it."""

    root: Path

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def run(self) -> Path:
        return self.root / "run"


# ----------------------------------------------------------------------------- running a command


def engine(argv: Iterable[str], *, cwd: Path, tmp: Path, timeout: float) -> subprocess.CompletedProcess:
    """`python -m engine ARGV` in a fresh process, as a user's script would run it.

    TMPDIR points into the scene, so a temporary file left behind is seen. Importing torchvision makes
    torch create its own kernel-cache folder (TMPDIR/torchinductor_<user>); that is torch's, not the
    command's, so it is pointed at a folder next to the scene.
    """
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(REPO), os.environ.get("PYTHONPATH")))),
           "TMPDIR": str(tmp), "TORCHINDUCTOR_CACHE_DIR": str(tmp.parent.parent / "torch-cache")}
    return subprocess.run([sys.executable, "-m", "engine", *argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def build_template(root: Path, *, fitted: bool) -> Template:
    """The dataset (2 classes x 6 images of 16 px) and, if `fitted`, one tiny fit on it (about 10 s)."""
    from conftest import write_image_folder

    template = Template(root)
    write_image_folder(template.data, classes=("cat", "dog"), per_class=6, size=16)
    if fitted:
        root.joinpath("tmp").mkdir(exist_ok=True)
        proc = engine(["fit", str(template.data), "--run-dir", str(template.run), "--device", "cpu",
                       "--pretrain-epochs", "1", "--epochs", "1", "--batch-size", "8", "--image-size", "16",
                       "--set", "embed.enabled=false", "--quiet"], cwd=root, tmp=root / "tmp", timeout=300)
        assert proc.returncode == 0, proc.stderr
    return template


def make_scene(root: Path, template: Template, *, with_run: bool) -> Scene:
    scene = Scene(root)
    for folder in (scene.tmp, scene.cwd):
        folder.mkdir(parents=True)
    shutil.copytree(template.data, scene.data, copy_function=shutil.copy2)  # copy2: the cache checks mtimes
    if with_run:
        shutil.copytree(template.run, scene.run, copy_function=_link_or_copy)
        source = json.loads((scene.run / "source.json").read_text())
        source.update(data=str(scene.data), root=str(scene.data))
        (scene.run / "source.json").write_text(json.dumps(source))
    return scene


def _link_or_copy(src: str, dst: str) -> None:
    # Checkpoints are only ever replaced (temp file + rename), never written in place, so a hard link is
    # safe to share; were one written in place, the snapshot comparison below would report it.
    if os.path.getsize(src) >= _LINK_AT_LEAST:
        os.link(src, dst)
    else:
        shutil.copy2(src, dst)


# ----------------------------------------------------------------------------- snapshots


@dataclass
class Snapshotter:
    """Signatures of every entry below a folder; file digests cached by inode, size and modification time
    (not the change time: hard-linking a checkpoint into a scene changes that, and its content stays)."""

    _digests: dict[tuple, str] = field(default_factory=dict)

    def take(self, root: Path) -> dict[str, tuple]:
        out: dict[str, tuple] = {}
        for folder, dirs, files in os.walk(root):  # links to folders are listed, never followed
            for name in (*dirs, *files):
                path = os.path.join(folder, name)
                out[os.path.relpath(path, root)] = self._signature(path)
        return out

    def _signature(self, path: str) -> tuple:
        st = os.lstat(path)
        if stat.S_ISREG(st.st_mode):  # only regular files are opened: a pipe would block the snapshot
            return ("file", stat.S_IMODE(st.st_mode), self._digest(path, st))
        if stat.S_ISLNK(st.st_mode):
            return ("link", os.readlink(path))
        if stat.S_ISDIR(st.st_mode):
            return ("dir",)
        return ("special", stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode))

    def _digest(self, path: str, st: os.stat_result) -> str:
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if key not in self._digests:
            with open(path, "rb") as f:
                self._digests[key] = hashlib.file_digest(f, "sha1").hexdigest()
        return self._digests[key]


# ----------------------------------------------------------------------------- one case


def play(case: Case, scene_root: Path, template: Template, snapshots: Snapshotter) -> subprocess.CompletedProcess:
    """Build the scene, run the case's command, and assert everything the module docstring lists."""
    scene = make_scene(scene_root, template, with_run=case.run)
    if case.setup is not None:
        case.setup(scene)
    before = snapshots.take(scene.root)
    argv = [scene.fill(a) for a in case.argv]
    try:
        proc = engine(argv, cwd=scene.cwd, tmp=scene.tmp, timeout=case.timeout)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"`{' '.join(argv)}` did not finish in {case.timeout:.0f} s (blocked?)") from None
    after = snapshots.take(scene.root)
    shown = f"\n$ {' '.join(argv)}\nexit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-3000:]}"
    assert proc.returncode == case.code, f"exit {proc.returncode}, expected {case.code}{shown}"
    assert "Traceback (most recent call last)" not in proc.stderr, f"a traceback{shown}"
    message = scene.fill(case.message)
    if case.code != 0:
        errors = [line for line in proc.stderr.splitlines() if "error:" in line]
        assert len(errors) == 1, f"expected one error line, got {len(errors)}{shown}"
        assert message in errors[0], f"{message!r} not in the error line{shown}"
    else:
        assert message in proc.stdout, f"{message!r} not on stdout{shown}"
    for text in (*ALWAYS_FORBIDDEN, *case.forbid):
        assert text not in proc.stdout + proc.stderr, f"{text!r} in the output{shown}"
    _assert_unchanged(case, before, after, shown)
    if case.check is not None:
        case.check(scene, proc)
    return proc


def _assert_unchanged(case: Case, before: dict[str, tuple], after: dict[str, tuple], shown: str) -> None:
    changes = RUN_JOURNAL if case.changes is None and case.run else (case.changes or ())
    changed = sorted(p for p, sig in before.items() if after.get(p) != sig and p not in changes)
    assert not changed, f"pre-existing entries changed or removed: {changed[:8]}{shown}"
    allowed = tuple(f"{w}/" for w in case.writes)
    new = sorted(p for p in set(after) - set(before) if p not in case.writes and not p.startswith(allowed))
    assert not new, f"written outside {', '.join(case.writes) or 'nothing'}: {new[:8]}{shown}"


# ----------------------------------------------------------------------------- setups


def steps(*setups: Setup) -> Setup:
    """Several setups, in order."""

    def run_all(scene: Scene) -> None:
        for s in setups:
            s(scene)

    return run_all


def write(rel: str, content: bytes | str) -> Setup:
    """A file at SCENE/rel (folders made as needed)."""

    def make(scene: Scene) -> None:
        path = scene.root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # never write into a file that may be hard-linked to the template
        path.write_bytes(content.encode() if isinstance(content, str) else content)

    return make


def fifo(rel: str) -> Setup:
    def make(scene: Scene) -> None:
        (scene.root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(scene.root / rel)

    return make


def folder(rel: str) -> Setup:
    def make(scene: Scene) -> None:
        (scene.root / rel).mkdir(parents=True, exist_ok=True)

    return make


def symlink(rel: str, target: str) -> Setup:
    """SCENE/rel -> target (a path, with placeholders)."""

    def make(scene: Scene) -> None:
        (scene.root / rel).parent.mkdir(parents=True, exist_ok=True)
        (scene.root / rel).symlink_to(scene.fill(target))

    return make


def damage(rel: str, how: str) -> Setup:
    """Replace SCENE/rel by its first half ("half") or by as many bytes of garbage ("garbage")."""

    def make(scene: Scene) -> None:
        path = scene.root / rel
        data = path.read_bytes()
        bad = data[: len(data) // 2] if how == "half" else bytes(range(7, 251)) * 16  # 3,904 bytes of noise
        write(rel, bad)(scene)

    return make


def remove(rel: str) -> Setup:
    def make(scene: Scene) -> None:
        target = scene.root / rel
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        else:
            target.unlink()

    return make

