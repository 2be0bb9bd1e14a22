"""The data sets of the label-error detection benchmark (bench/quality.py), written once and reused.

A case is one set of images with one set of given labels and a truth file that says which are wrong:

    cifar10        CIFAR-10 train images with their true labels (../shared/data/to_folder.py), then synthetic
                   noise from the project's own `python -m engine noise`; clean test split from CIFAR-10 test
    cifar10n-worst    CIFAR-10 train images under CIFAR-10N's real human labels (40 %, 9 %, ~17 % wrong):
    cifar10n-aggre    the first (--rows first) or last (--rows last) N per class of the labelled rows
    cifar10n-random1  0..44,999, written by bench/quality_real.py; test = CIFAR-10 test
    cifar10-clean  the same images under their TRUE labels (0 % noise): where any change makes labels worse
    digits         bench/digits.make_digits: jittered handwritten digits with engine.data.noise noise, clean test split
    sample         the bundled sample_data/ (20 % asymmetric noise, its truth.csv); no test split
    imagenette1    Imagenette train photos under fastai's 1 / 5 / 25 / 50 % noisy labels; test = Imagenette val
    imagenette5
    imagenette25
    imagenette50
    folder         any class-folder tree whose labels are the given ones, with truth.csv or noise.csv inside
    clean-folder   any class-folder tree with TRUE labels; the synthetic noise is added like for cifar10

Presets (--case real, --case all-real) name several of these at once (PRESETS).

Everything generated goes under the git-ignored bench/data/quality/. Each folder is written into a
temporary sibling and renamed when complete, so an interrupted run never leaves a half-written folder
that a later run would trust.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.quality_real import ROWS, write_cifar10_dev

ROOT = Path(__file__).resolve().parents[1]
DATA_ROOT = ROOT / "bench" / "data" / "quality"
SAMPLE_DATA = ROOT / "sample_data"
CIFAR10_DEV: tuple[str, ...] = ("cifar10n-worst", "cifar10n-aggre", "cifar10n-random1", "cifar10-clean")
IMAGENETTE: tuple[str, ...] = ("imagenette1", "imagenette5", "imagenette25", "imagenette50")
KINDS: tuple[str, ...] = ("cifar10", *CIFAR10_DEV, "digits", "sample", *IMAGENETTE, "folder", "clean-folder")
SYNTHETIC: tuple[str, ...] = ("cifar10", "digits", "clean-folder")  # the cases that take --noise/--rate/--grid
NOISE_KINDS: tuple[str, ...] = ("symmetric", "asymmetric", "pair")
# The paper's CIFAR-10 grid (Ciortan et al. 2021, Table 1): symmetric 20-80 %, asymmetric 20 and 40 %.
PAPER_GRID: tuple[tuple[str, float], ...] = (
    ("symmetric", 0.2), ("symmetric", 0.4), ("symmetric", 0.6), ("symmetric", 0.8),
    ("asymmetric", 0.2), ("asymmetric", 0.4),
)
# Real noise first, then the clean case where any change is for the worse; all-real adds the rest of
# the real sets and the synthetic case the earlier results were reported on, pinned to 40 % symmetric.
PRESETS: dict[str, tuple[str, ...]] = {
    "real": ("cifar10n-worst", "cifar10n-aggre", "cifar10n-random1", "imagenette25", "imagenette5", "cifar10-clean"),
}
PRESETS["all-real"] = (*PRESETS["real"], "imagenette1", "imagenette50", "cifar10")
PRESET_NOISE: dict[str, dict[str, tuple[tuple[str, float], ...]]] = {"all-real": {"cifar10": (("symmetric", 0.4),)}}
DEFAULT_PER_CLASS = {"cifar10": 500, "digits": 300, **dict.fromkeys(CIFAR10_DEV, 500), **dict.fromkeys(IMAGENETTE, 200)}
DEFAULT_TEST_PER_CLASS = {"cifar10": 100, "digits": 100, **dict.fromkeys(CIFAR10_DEV, 100),
                          **dict.fromkeys(IMAGENETTE, 50)}

@dataclass(frozen=True)
class Case:
    """One benchmark case: which images, which noise. `images` names the image set: runs on the same
    images may share the label-free SimCLR pre-training whatever their labels."""

    kind: str
    noise: str | None = None  # synthetic cases only
    rate: float | None = None
    n_per_class: int | None = None  # None: every image
    test_per_class: int | None = None
    data: Path | None = None  # folder / clean-folder
    test: Path | None = None
    mapping: str | None = None  # asymmetric noise on classes other than CIFAR-10's: engine noise --mapping
    rows: str = "first"  # CIFAR10_DEV cases: the first or the last n_per_class labelled rows of each class

    @property
    def images(self) -> str:
        if self.kind in ("folder", "clean-folder"):
            return f"{self.kind}:{Path(self.data or '').resolve()}"
        if self.kind.startswith("imagenette"):
            return f"imagenette:{self.n_per_class}"
        if self.kind in CIFAR10_DEV:  # the human-label cases and the clean one show the very same images
            return f"cifar10-dev-{self.rows}:{self.n_per_class}"
        return f"{self.kind}:{self.n_per_class}"

    @property
    def name(self) -> str:
        """File-name-safe id, e.g. cifar10-n5000-sym40, cifar10n-worst-n5000-last."""
        if self.kind == "sample":
            return "sample"
        base = Path(self.data).name if self.kind in ("folder", "clean-folder") and self.data else self.kind
        by_total = self.kind in ("cifar10", "digits", *CIFAR10_DEV)
        size = f"-n{self.n_per_class * 10}" if self.n_per_class and by_total else (
            f"-{self.n_per_class}pc" if self.n_per_class else "")
        noise = f"-{self.noise[:3]}{round((self.rate or 0) * 100)}" if self.noise else ""
        rows = "-last" if self.kind in CIFAR10_DEV and self.rows == "last" else ""
        return f"{base}{size}{noise}{rows}"

    @property
    def title(self) -> str:
        human = "CIFAR-10 train under CIFAR-10N's {} human labels"
        what = {"cifar10": "CIFAR-10 train", "digits": "jittered handwritten digits (bench/digits.py)",
                "cifar10n-worst": human.format("'worst'"), "cifar10n-aggre": human.format("'aggregate'"),
                "cifar10n-random1": human.format("'random 1'"),
                "cifar10-clean": "CIFAR-10 train under its true labels (0 % noise)",
                "sample": "bundled sample_data (1,797 digits, 20 % asymmetric noise)",
                **{k: f"Imagenette 96 px, fastai's {k.removeprefix('imagenette')} % noisy labels" for k in IMAGENETTE},
                "folder": f"folder {self.data}", "clean-folder": f"folder {self.data} (true labels)"}[self.kind]
        per = f", {self.n_per_class} per class" if self.n_per_class else ""
        if self.kind in CIFAR10_DEV:
            per += f" ({self.rows} of each class in rows 0..44,999)"
        noise = f", {self.noise} noise {self.rate:.0%} (engine.data.noise)" if self.noise else ""
        return f"{what}{per}{noise}"


@dataclass(frozen=True)
class CaseData:
    train: Path  # class folders under the GIVEN labels
    truth: Path  # CSV path,true_label,... (paths relative to `train`)
    test: Path | None  # clean labelled test folder, if the case has one


def make_cases(kinds: list[str], grid: list[tuple[str, float]], *, n_per_class: int | None,
               test_per_class: int | None, data: Path | None, test: Path | None, mapping: str | None,
               rows: str = "first") -> list[Case]:
    """Expand presets and case kinds x noise grid (the grid applies to synthetic cases only)."""
    if rows not in ROWS:
        raise ValueError(f"--rows must be one of {', '.join(ROWS)}, got {rows!r}")
    cases: list[Case] = []
    for kind, pinned in expand_presets(kinds):
        if kind in ("folder", "clean-folder") and data is None:
            raise ValueError(f"--case {kind} needs --data DIR")
        sized = kind in DEFAULT_PER_CLASS  # the others use every image as is
        npc = (n_per_class if n_per_class is not None else DEFAULT_PER_CLASS.get(kind)) if sized else None
        tpc = (test_per_class if test_per_class is not None else DEFAULT_TEST_PER_CLASS.get(kind)) if sized else None
        common = dict(n_per_class=npc, test_per_class=tpc, data=data, test=test, mapping=mapping, rows=rows)
        if kind in SYNTHETIC:
            cases.extend(Case(kind, noise=k, rate=r, **common) for k, r in (pinned or grid))
        else:
            cases.append(Case(kind, **common))
    return list(dict.fromkeys(cases))  # a case named twice (a preset and itself) runs once


def expand_presets(kinds: list[str]) -> list[tuple[str, tuple[tuple[str, float], ...] | None]]:
    """(kind, pinned noise grid or None) for each kind, presets replaced by what they name."""
    out: list[tuple[str, tuple[tuple[str, float], ...] | None]] = []
    for kind in kinds:
        if kind in PRESETS:
            out += [(k, PRESET_NOISE.get(kind, {}).get(k)) for k in PRESETS[kind]]
        elif kind in KINDS:
            out.append((kind, None))
        else:
            raise ValueError(f"unknown case {kind!r}: use one of {', '.join([*KINDS, *PRESETS])}")
    return out


def parse_grid(text: str | None, noise: str, rate: float) -> list[tuple[str, float]]:
    """`paper`, a list such as `symmetric:0.2,asymmetric:0.4`, or (None) the single --noise/--rate."""
    if text is None:
        pairs = [(noise, rate)]
    elif text == "paper":
        pairs = list(PAPER_GRID)
    else:
        pairs = []
        for item in text.split(","):
            kind, sep, value = item.strip().partition(":")
            if not sep:
                raise ValueError(f"--grid item {item!r} is not KIND:RATE (e.g. symmetric:0.4)")
            try:
                pairs.append((kind, float(value)))
            except ValueError:
                raise ValueError(f"--grid item {item!r}: {value!r} is not a number") from None
    for kind, r in pairs:
        if kind not in NOISE_KINDS:
            raise ValueError(f"noise kind must be one of {', '.join(NOISE_KINDS)}, got {kind!r}")
        if not 0.0 <= r < 1.0:
            raise ValueError(f"noise rate must be in [0, 1), got {r}")
    return pairs


# ---------------------------------------------------------------------------------------------- writing


def shared_data_dir(explicit: Path | None) -> Path:
    """Folder of the packed real data sets and to_folder.py (../shared/data next to the repository)."""
    candidates = [explicit] if explicit else [ROOT.parent / "shared" / "data", ROOT / "shared" / "data"]
    for c in candidates:
        if c is not None and (Path(c) / "to_folder.py").is_file():
            return Path(c)
    raise ValueError(f"to_folder.py not found in {', '.join(str(c) for c in candidates)}: "
                     "pass --shared-data DIR (the folder of ../shared/data/README.md)")


def materialise(case: Case, *, root: Path, seed: int, shared: Path | None) -> CaseData:
    """Write (once) the folders of `case` under `root` and return where they are."""
    if case.kind == "sample":
        return CaseData(SAMPLE_DATA, SAMPLE_DATA / "truth.csv", None)
    if case.kind == "folder":
        return CaseData(Path(case.data), _truth_in(Path(case.data)), case.test)
    if case.kind.startswith("imagenette"):
        return _imagenette(case, root, shared_data_dir(shared))
    if case.kind in CIFAR10_DEV:
        return _cifar10_dev(case, root, shared_data_dir(shared))
    if case.kind == "digits":
        return _digits(case, root, seed)
    clean, test = Path(case.data or ""), case.test
    if case.kind == "cifar10":
        shared_dir = shared_data_dir(shared)
        clean = _once(root / f"cifar10-train-{case.n_per_class}pc",
                      lambda out: _to_folder(shared_dir, ["cifar10", "--split", "train"], case.n_per_class, out))
        test = _cifar10_test(case, root, shared_dir)
    noisy = _once(root / f"{clean.name}-{case.noise}-{case.rate}-seed{seed}",
                  lambda out: _engine_noise(clean, out, case, seed))
    return CaseData(noisy, noisy / "noise.csv", test)


def _truth_in(folder: Path) -> Path:
    for name in ("truth.csv", "noise.csv"):
        if (folder / name).is_file():
            return folder / name
    raise ValueError(f"{folder} holds no truth.csv or noise.csv (path,true_label): the flags cannot be scored")


def _once(folder: Path, write: Callable[[Path], None]) -> Path:
    """`folder` if complete, else write it into a temporary sibling and rename it into place."""
    if folder.is_dir():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        write(tmp / "d")
        os.replace(tmp / "d", folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def _to_folder(shared: Path, args: list[str], per_class: int | None, out: Path) -> None:
    cmd = [sys.executable, str(shared / "to_folder.py"), *args, "--out", str(out)]
    if per_class:
        cmd += ["--per-class", str(per_class)]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def _engine_noise(clean: Path, out: Path, case: Case, seed: int) -> None:
    cmd = [sys.executable, "-m", "engine", "noise", str(clean), "--out", str(out), "--kind", str(case.noise),
           "--rate", str(case.rate), "--seed", str(seed)]
    if case.mapping:
        cmd += ["--mapping", case.mapping]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"engine noise failed on {clean}: {done.stderr.strip() or done.stdout.strip()}")


def _digits(case: Case, root: Path, seed: int) -> CaseData:
    from bench.digits import make_digits

    n = (case.n_per_class or 300) * 10
    n_test = (case.test_per_class or 100) * 10

    def write(out: Path) -> None:
        make_digits(out / "train", n=n, kind=str(case.noise), rate=float(case.rate or 0), seed=seed,
                    test_out=out / "test", n_test=n_test)

    folder = _once(root / f"digits-n{n}-t{n_test}-{case.noise}-{case.rate}-seed{seed}", write)
    return CaseData(folder / "train", folder / "train" / "truth.csv", folder / "test")


def _cifar10_test(case: Case, root: Path, shared: Path) -> Path:
    return _once(root / f"cifar10-test-{case.test_per_class}pc",
                 lambda out: _to_folder(shared, ["cifar10", "--split", "test"], case.test_per_class, out))


def _cifar10_dev(case: Case, root: Path, shared: Path) -> CaseData:
    labels = case.kind.removeprefix("cifar10n-").removeprefix("cifar10-")  # worst, aggre, random1, clean
    per = f"{case.n_per_class}pc" if case.n_per_class else "all"
    train = _once(root / f"cifar10-dev-{labels}-{per}-{case.rows}",
                  lambda out: write_cifar10_dev(shared, out, labels=labels, n_per_class=case.n_per_class,
                                                rows=case.rows))
    return CaseData(train, train / "truth.csv", _cifar10_test(case, root, shared))


def _imagenette(case: Case, root: Path, shared: Path) -> CaseData:
    noisy = case.kind.removeprefix("imagenette")
    per = f"-{case.n_per_class}pc" if case.n_per_class else ""
    train = _once(root / f"imagenette-train-noisy{noisy}{per}",
                  lambda out: _to_folder(shared, ["imagenette", "--split", "train", "--noisy", noisy],
                                         case.n_per_class, out))
    tper = f"-{case.test_per_class}pc" if case.test_per_class else ""
    test = _once(root / f"imagenette-val{tper}",
                 lambda out: _to_folder(shared, ["imagenette", "--split", "val"], case.test_per_class, out))
    return CaseData(train, train / "truth.csv", test)
