"""Simulated label noise: flip a known share of labels, seeded, to measure how well mislabels are found.

Three kinds, all choosing exactly floor(rate * n_c) images of each (source) class c, without replacement:

* symmetric: each chosen image moves to a uniformly drawn OTHER class (never its own). This is the
  protocol of Ma et al. 2020 used by the paper, so the share of wrong labels is exactly the rate
  (DivideMix/ELR draw from all C classes, which gives only rate * (C-1)/C wrong labels);
* asymmetric: each chosen image of a source class moves to that class's target in a mapping of
  confusable classes (CIFAR-10: truck->automobile, bird->airplane, deer->horse, cat<->dog). Images are
  chosen from the TRUE labels and written into a copy, so a cat flipped to "dog" can never be picked
  again as a dog (the reference code of Ma et al. re-reads the already flipped labels);
* pair: c -> c+1 (mod C), an asymmetric mapping over every class.

For CIFAR-100 the asymmetric mapping shifts each class to the next one inside consecutive blocks of
five class indices (the last one of a block goes to the first). The reference implementation draws
each label from a transition matrix, so its realised rate is only close to the rate; here exactly
floor(rate * n_c) images per class flip, which makes runs comparable and repeatable.

Everything is driven by one numpy Generator seeded with `seed`: the same labels, rate and seed
always give the same noisy labels.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from engine.data.files import link_or_copy, safe_folder_name
from engine.data.intake import DatasetRecord
from engine.data.safezip import is_hidden
from engine.errors import UserError
from engine.filekind import require_regular_file
from engine.runs.atomic import atomic_write_text

KINDS: tuple[str, ...] = ("symmetric", "asymmetric", "pair")
CIFAR10_CLASSES: tuple[str, ...] = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)
# Source -> target class names of the CIFAR-10 asymmetric protocol (Active-Passive Losses, Ma et al. 2020).
CIFAR10_CONFUSIONS: tuple[tuple[str, str], ...] = (
    ("truck", "automobile"), ("bird", "airplane"), ("deer", "horse"), ("cat", "dog"), ("dog", "cat"),
)
# Confusable handwritten digits, every class a source: used for the bundled sample and bench/digits.py.
DIGIT_CONFUSIONS: tuple[tuple[str, str], ...] = (
    ("0", "6"), ("1", "7"), ("2", "3"), ("3", "8"), ("4", "9"),
    ("5", "6"), ("6", "5"), ("7", "1"), ("8", "3"), ("9", "4"),
)
NOISE_CSV_COLUMNS = ("path", "true_label", "noisy_label")
# rate * n is computed in floating point (0.29 * 100 = 28.999999999999996); nudging by this before the
# floor gives the count a person expects without changing any count that is not a rounding artefact.
_FLOOR_EPS = 1e-9
# A mapping names each class at most once (CIFAR-100's is 3 KB); a larger file is not one and is never read.
MAX_MAPPING_BYTES = 1024 * 1024


@dataclass(frozen=True)
class NoiseResult:
    noisy_labels: np.ndarray  # (N,) int64
    flipped: np.ndarray  # (N,) bool: noisy_labels != labels
    per_class_rate: dict[str, float]  # share of each TRUE class whose label was changed

    @property
    def rate(self) -> float:
        """Share of all labels that were changed."""
        return float(self.flipped.mean()) if self.flipped.size else 0.0


def flip_count(rate: float, n: int) -> int:
    """floor(rate * n): how many of n images of a class are flipped."""
    return int(math.floor(rate * n + _FLOOR_EPS))


def inject_noise(
    labels: np.ndarray,
    *,
    classes: Sequence[str],
    kind: str,
    rate: float,
    seed: int,
    mapping: Mapping[int, int] | None = None,
) -> NoiseResult:
    """Flip exactly floor(rate * n_c) labels of each (source) class c.

    Args:
        labels: (N,) true class indices into `classes`.
        classes: class names, index order.
        kind: "symmetric", "asymmetric" (needs `mapping`) or "pair".
        rate: share of each class to flip, in [0, 1).
        seed: seeds the one numpy Generator used.
        mapping: asymmetric only: source class index -> target class index.

    Returns:
        NoiseResult with noisy labels (N,), the flipped mask (N,) and the realised rate per class.
    """
    labels = np.asarray(labels)
    num_classes = len(classes)
    _validate(labels, num_classes, kind, rate, mapping)
    rng = np.random.default_rng(seed)
    noisy = labels.astype(np.int64).copy()
    if kind == "symmetric":
        for c in range(num_classes):
            chosen = _choose(rng, labels, c, rate)
            # Uniform over the C-1 other classes: draw from 0..C-2 and step over c itself.
            others = rng.integers(0, num_classes - 1, size=len(chosen))
            noisy[chosen] = others + (others >= c)
    else:
        pairs = {c: (c + 1) % num_classes for c in range(num_classes)} if kind == "pair" else dict(mapping or {})
        for source in sorted(pairs):
            noisy[_choose(rng, labels, source, rate)] = pairs[source]  # chosen from the TRUE labels
    flipped = noisy != labels
    per_class = {
        name: float(flipped[labels == c].mean()) if np.any(labels == c) else 0.0 for c, name in enumerate(classes)
    }
    return NoiseResult(noisy_labels=noisy, flipped=flipped, per_class_rate=per_class)


def _choose(rng: np.random.Generator, labels: np.ndarray, c: int, rate: float) -> np.ndarray:
    members = np.flatnonzero(labels == c)
    k = flip_count(rate, len(members))
    return rng.choice(members, size=k, replace=False) if k else members[:0]


def _validate(labels: np.ndarray, num_classes: int, kind: str, rate: float, mapping: Mapping[int, int] | None) -> None:
    if kind not in KINDS:
        raise UserError(f"noise kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if not (0.0 <= rate < 1.0) or math.isnan(rate):
        raise UserError(f"noise rate must be in [0, 1), got {rate}")
    if num_classes < 2:
        raise UserError("label noise needs at least two classes")
    if labels.ndim != 1 or (labels.size and (labels.min() < 0 or labels.max() >= num_classes)):
        raise ValueError(f"labels must be a 1-D array of class indices in [0, {num_classes})")
    if kind == "asymmetric":
        if not mapping:
            raise UserError("asymmetric noise needs a mapping source class -> target class")
        for s, t in mapping.items():
            if not (0 <= s < num_classes and 0 <= t < num_classes):
                raise UserError(f"mapping {s}->{t} refers to a class outside 0..{num_classes - 1}")
            if s == t:
                raise UserError(f"mapping sends class {s} to itself")
    elif mapping is not None:
        raise UserError(f"a mapping applies to asymmetric noise only, not {kind}")


# ----------------------------------------------------------------------------- mappings


def mapping_by_name(pairs: Sequence[tuple[str, str]] | Mapping[str, str], classes: Sequence[str]) -> dict[int, int]:
    """{source name: target name} -> {source index: target index}; every name must be a class."""
    items = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs)
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({n for pair in items for n in pair if n not in index})
    if unknown:
        raise UserError(f"the mapping names classes this data set lacks: {', '.join(map(repr, unknown))}")
    out: dict[int, int] = {}
    for source, target in items:
        if source == target:
            raise UserError(f"the mapping sends class {source!r} to itself")
        if index[source] in out:
            raise UserError(f"the mapping lists class {source!r} as a source twice")
        out[index[source]] = index[target]
    return out


def cifar10_mapping(classes: Sequence[str]) -> dict[int, int]:
    """CIFAR-10's asymmetric mapping by class NAME (whatever order `classes` is in)."""
    return mapping_by_name(CIFAR10_CONFUSIONS, classes)


def digits_mapping(classes: Sequence[str]) -> dict[int, int]:
    """Confusable digits 0->6, 1->7, 2->3, 3->8, 4->9, 5->6, 6->5, 7->1, 8->3, 9->4, by class name."""
    return mapping_by_name(DIGIT_CONFUSIONS, classes)


def cifar100_mapping(num_classes: int) -> dict[int, int]:
    """i -> i+1 inside consecutive blocks of 5 class indices, the block's last index -> its first.

    The blocks are index blocks, not CIFAR-100's superclasses (the fine labels are alphabetical);
    the literature uses index blocks, and so do we for comparability.
    """
    if num_classes < 5 or num_classes % 5:
        raise UserError(f"the CIFAR-100 mapping needs a multiple of 5 classes, got {num_classes}")
    return {i: (i // 5) * 5 + (i % 5 + 1) % 5 for i in range(num_classes)}


def is_cifar10(classes: Sequence[str]) -> bool:
    return sorted(classes) == sorted(CIFAR10_CLASSES)


def load_mapping(path: Path, classes: Sequence[str]) -> dict[int, int]:
    """Read a mapping by class name: CSV with columns source,target, or JSON {"source": "target"}."""
    path = Path(path)
    # Looked at before it is opened: a named pipe would block the read forever, a device never end.
    require_regular_file(path, "the mapping file", "a CSV or JSON file", max_bytes=MAX_MAPPING_BYTES)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise UserError(f"cannot read the mapping file {path} ({e.strerror or e})") from e
    except UnicodeDecodeError as e:
        raise UserError(f"the mapping file {path} is not UTF-8 text: save it as UTF-8") from e
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path} is not valid JSON ({e})") from e
        except RecursionError:
            raise UserError(f"{path} is not valid JSON (nested too deeply)") from None
        if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
            raise UserError(f'{path} must hold one JSON object of class names, e.g. {{"cat": "dog"}}')
        pairs: list[tuple[str, str]] = list(data.items())
    else:
        try:
            rows = list(csv.reader(io.StringIO(text)))
        except csv.Error as e:  # e.g. a field over the csv module's size limit
            raise UserError(f"{path} is not a readable CSV file ({e})") from None
        header = [h.strip().lower() for h in rows[0]] if rows else []
        if "source" not in header or "target" not in header:
            raise UserError(f"{path} must be a CSV whose first row names the columns source,target")
        i_s, i_t = header.index("source"), header.index("target")
        pairs = [(r[i_s].strip(), r[i_t].strip()) for r in rows[1:] if len(r) > max(i_s, i_t) and any(r)]
    if not pairs:
        raise UserError(f"{path} maps no class")
    return mapping_by_name(pairs, classes)


# ----------------------------------------------------------------------------- noisy copies


def check_output_folder(out: Path, data: Path) -> None:
    """OUT must be new or empty and must not lie inside the data: the source is never modified."""
    out, data = Path(out), Path(data)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} already exists and is not empty: choose a new output folder")
    data_folder = data.resolve() if data.is_dir() else data.resolve().parent if data.suffix.lower() == ".csv" else None
    if data_folder is not None and out.resolve().is_relative_to(data_folder):
        raise UserError(f"{out} is inside the data folder {data_folder}: write the noisy copy somewhere else")


def write_noisy_copy(record: DatasetRecord, result: NoiseResult, out: Path) -> Path:
    """Write the images as class folders under their NOISY labels, plus OUT/noise.csv.

    noise.csv's true_label and noisy_label are folder names (see `class_folders`), so they match the
    labels a later scan of OUT gives (a CSV label `a/b` is the class `a_b` there).

    Files are hard links to the originals where the file system allows (no extra space), copies
    otherwise. Each image keeps its path below its class folder; a name taken twice in one class gets
    the image id appended. The tree is built in a temporary folder next to OUT and moved into place,
    so OUT is either complete or absent.

    Returns:
        OUT.
    """
    out = Path(out)
    check_output_folder(out, record.root)
    if len(result.noisy_labels) != len(record.samples):
        raise ValueError(f"{len(result.noisy_labels)} noisy labels for {len(record.samples)} images")
    folders = class_folders(record.classes)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        rows = _link_tree(record, result, folders, tmp)
        atomic_write_text(tmp / "noise.csv", _noise_csv(rows))
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def class_folders(classes: Sequence[str]) -> dict[str, str]:
    """The folder of each class in a noisy copy: its label made safe as one folder name.

    A scan of the copy reads these folder names back as the labels, so two classes must never share
    one folder (`x/y` and `x_y` would silently merge) and none may become a folder a scan skips.

    Raises:
        UserError: two classes map to the same folder name, or one to a hidden name.
    """
    folders: dict[str, str] = {}
    owner: dict[str, str] = {}
    for label in classes:
        name = safe_folder_name(label)
        if name in owner:
            raise UserError(
                f"the classes {owner[name]!r} and {label!r} would both be written to the folder {name!r}: "
                "rename one of them"
            )
        if is_hidden(name):
            raise UserError(f"the class {label!r} would be written to the folder {name!r}, which a scan skips: rename it")
        owner[name] = label
        folders[label] = name
    return folders


def _link_tree(
    record: DatasetRecord, result: NoiseResult, folders: Mapping[str, str], dest: Path
) -> list[tuple[str, str, str]]:
    """Link every image into its noisy class folder; rows of noise.csv with labels as a scan of `dest` reads them."""
    taken: set[str] = set()
    rows = []
    for sample, noisy in zip(record.samples, result.noisy_labels.tolist(), strict=True):
        noisy_label = record.classes[noisy]
        parts = PurePosixPath(sample.path).parts
        below = parts[1:] if len(parts) > 1 and parts[0] == sample.label else parts
        rel = PurePosixPath(folders[noisy_label], *below)  # a label is never a path
        if rel.as_posix().casefold() in taken:
            rel = rel.with_name(f"{rel.stem}_{sample.id[:8]}{rel.suffix}")
        taken.add(rel.as_posix().casefold())
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        link_or_copy(record.root / sample.path, target)
        rows.append((rel.as_posix(), folders[sample.label], folders[noisy_label]))
    return sorted(rows)


def _noise_csv(rows: list[tuple[str, str, str]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(NOISE_CSV_COLUMNS)
    writer.writerows(rows)
    return buf.getvalue()
