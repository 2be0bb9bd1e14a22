"""Handlers of the data commands `scan`, `prepare` and `noise` (flags: engine.cli).

Exit codes: 0 when the data can be used (skipped files are listed, not fatal), 2 when it cannot, with
the problem on stderr (`scan --json` also prints {"error": "..."} on stdout, so a caller reading JSON
always gets one object). No torch is imported here.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from engine.data.cache import CACHE_FILES, INTAKE_FILE
from engine.data.intake import DatasetRecord, IntakeError, scan
from engine.errors import UserError

USAGE_ERROR = 2


def cmd_scan(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix="clean-scan-") as tmp:
        try:
            record = scan(args.data, root=args.root, extract_to=Path(tmp) / "extracted")
        except IntakeError as e:
            return _fail(str(e), as_json=args.json)
        if args.json:
            print(json.dumps(record.to_report(), ensure_ascii=False))
        else:
            print(format_report(record))
    return 0


EXTRACTED = "extracted"  # a zipped DATA's images, extracted beside the cache so its paths stay real files
CACHE_ENTRIES = frozenset({*CACHE_FILES, EXTRACTED})


def _cache_target_problem(out: Path, data: Path) -> str | None:
    """Why --out may not receive a cache: it would overwrite a user's files or land among the images."""
    out_r, data_r = out.resolve(), data.resolve()
    if data_r.is_dir() and (out_r == data_r or data_r in out_r.parents):
        return f"--out {out} is inside the data folder {data}; put the cache outside the images"
    if out_r == data_r or out_r in data_r.parents:
        return f"the data {data} is inside --out {out}; choose another --out"
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file; give a folder for the cache"
    foreign = sorted(p.name for p in out.iterdir() if p.name not in CACHE_ENTRIES and not p.name.endswith(".tmp")) \
        if out.is_dir() else []
    if foreign:
        # Only a previous cache (its own three files) may be refreshed in place.
        return f"--out {out} already holds other files ({', '.join(foreign[:3])}); give an empty or new folder"
    return None


def cmd_prepare(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from engine.data.cache import is_prepared, prepare

    out: Path = args.out
    size_problem = _image_size_problem(args.image_size)
    if size_problem:
        return _fail(size_problem)
    problem = _cache_target_problem(Path(out), Path(args.data))
    if problem:
        return _fail(problem)
    try:
        # A zip is extracted next to the cache, so the cache's paths keep pointing at real files.
        # The header check is enough here: prepare decodes every image anyway and drops those that fail.
        record = scan(args.data, root=args.root, extract_to=out / EXTRACTED, check="header")
    except IntakeError as e:
        return _fail(str(e))
    if is_prepared(out, record, args.image_size):
        print(f"{out}: the cache of {len(record.samples)} images at {args.image_size} px is up to date")
        return 0
    start = time.perf_counter()
    with tqdm(total=len(record.samples), unit="img", desc="prepare", file=sys.stderr) as bar:

        def progress(done: int, total: int) -> None:
            bar.update(done - bar.n)

        try:
            data = prepare(record, out, image_size=args.image_size, progress=progress, workers=args.workers)
        except (IntakeError, ValueError) as e:  # ValueError: a negative --workers
            return _fail(str(e))
    seconds = time.perf_counter() - start
    print(
        f"prepared {len(data)} images of {len(data.classes)} classes at {data.image_size}x{data.image_size} px "
        f"in {seconds:.1f} s ({len(data) / max(seconds, 1e-9):.0f} images/s) -> {out}"
    )
    if data.skipped:
        print(f"skipped {len(data.skipped)} files (listed in {out / INTAKE_FILE})")
    return 0


def _image_size_problem(size: int) -> str | None:
    """The working-size rule of a run (engine.config.validate, the one place it is written), as a flag."""
    from engine.config import AUTO_SIZE, DataConfig, RunConfig, validate

    if size == AUTO_SIZE:  # a run resolves auto from its device (engine.data.working_size); a cache has none
        return f"--image-size must be between 8 and 512, got {size} (auto is for fit, which knows the device)"
    try:
        validate(RunConfig(data=DataConfig(image_size=size)))  # every other setting is a valid default
    except ValueError as e:
        return f"--{str(e).replace('image_size', 'image-size', 1)}"
    return None


def cmd_noise(args: argparse.Namespace) -> int:
    from engine.data import noise

    try:
        noise.check_output_folder(args.out, args.data)
        if args.kind != "asymmetric" and args.mapping is not None:
            raise UserError(f"--mapping applies to --kind asymmetric only, not {args.kind}")
        if not 0.0 <= args.rate < 1.0:
            raise UserError(f"--rate must be in [0, 1), got {args.rate}")
    except UserError as e:
        return _fail(str(e))
    with tempfile.TemporaryDirectory(prefix="clean-noise-") as tmp:
        try:
            record = scan(args.data, root=args.root, extract_to=Path(tmp) / "extracted")
            mapping = _noise_mapping(args.kind, args.mapping, record.classes)
            result = noise.inject_noise(
                record.label_indices(),
                classes=record.classes,
                kind=args.kind,
                rate=args.rate,
                seed=args.seed,
                mapping=mapping,
            )
            noise.write_noisy_copy(record, result, args.out)
        except UserError as e:  # IntakeError too
            return _fail(str(e))
    counts = record.counts()
    print(f"{args.kind} noise, rate {args.rate}, seed {args.seed}: {int(result.flipped.sum())} of "
          f"{len(record.samples)} labels changed ({result.rate:.1%}) -> {args.out}")
    width = max(len(c) for c in record.classes)
    for name in record.classes:
        print(f"  {name:<{width}}  {result.per_class_rate[name]:6.1%} of {counts[name]}")
    if record.skipped:
        print(f"{len(record.skipped)} unusable files were left out (run `scan` for the list)")
    return 0


def _noise_mapping(kind: str, mapping: str | None, classes: tuple[str, ...]) -> dict[int, int] | None:
    from engine.data import noise

    if kind != "asymmetric":
        return None
    if mapping is None:
        if noise.is_cifar10(classes):
            return noise.cifar10_mapping(classes)
        raise UserError(
            "asymmetric noise needs --mapping: cifar10, cifar100, or a CSV (source,target) / JSON "
            "{\"source\": \"target\"} file of class names; the classes are not CIFAR-10's, so none is implied"
        )
    if mapping == "cifar10":
        return noise.cifar10_mapping(classes)
    if mapping == "cifar100":
        return noise.cifar100_mapping(len(classes))
    path = Path(mapping)
    if not path.is_file():
        raise UserError(f"--mapping {mapping!r} is neither cifar10, cifar100 nor an existing file")
    return noise.load_mapping(path, classes)


def format_report(record: DatasetRecord) -> str:
    """The intake report as text for people."""
    counts = record.counts()
    width = max([len("class"), *(len(c) for c in record.classes)])
    lines = [
        f"{record.source}: {record.kind}, {len(record.samples)} images in {len(record.classes)} classes",
        f"  {'class':<{width}}  images",
        *(f"  {c:<{width}}  {counts[c]:>6}" for c in record.classes),
    ]
    if record.skipped:
        lines.append(f"skipped {len(record.skipped)} files:")
        lines.extend(f"  {s.path}: {s.reason}" for s in record.skipped)
    else:
        lines.append("skipped 0 files")
    lines.append(f"ignored {record.ignored} files that are not images")
    return "\n".join(lines)


def _fail(message: str, *, as_json: bool = False) -> int:
    if as_json:
        print(json.dumps({"error": message}, ensure_ascii=False))
    print(f"error: {message}", file=sys.stderr)
    return USAGE_ERROR

