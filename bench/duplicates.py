"""Near-duplicate detection on real images with injected copies of known images.

    python bench/duplicates.py                      # perceptual hash alone (no training), sweep of thresholds
    python bench/duplicates.py --features RUN       # ... and with the encoder features of a run fitted on
                                                    #     bench/data/duplicates/data (see --fit)
    python bench/duplicates.py --fit                # fit that run first (a short CPU run), then measure

The data: 2,000 CIFAR-10 train images (200 per class, ../shared/data/to_folder.py) plus 200 copies of
200 of them, 50 of each kind: resized (down to 50-75 % and back up, bilinear), re-compressed (JPEG
quality 50), cropped (a random 90 % x 90 % window, written at that size: the cache scales it back) and
flipped (mirror image). Half of the copies of each kind are filed under another class than their
original (a certain label error), half under the same class. The truth is the 200 (original, copy)
pairs; a pair the detector finds that is no injected pair is a false positive, unless it is one of
CIFAR-10's own near-duplicates (listed separately: the data set has some).

Scored on pairs: precision = found pairs that are true / found pairs, recall = true pairs found / 200,
where "found pairs" are all pairs inside the detected groups (a group of three is three pairs).
Writes bench/results/duplicates.md.
"""

from __future__ import annotations

import argparse
import io
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.fft import dctn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import DATA, RESULTS, ROOT, ensure_cifar10, machine_lines  # noqa: E402
from engine.data.cache import load_prepared, prepare  # noqa: E402
from engine.data.intake import scan  # noqa: E402
from engine.method.duplicates import find_duplicates, groups_of  # noqa: E402
from engine.method.neighbours import nearest_neighbours, similarities  # noqa: E402

KINDS = ("resized", "jpeg50", "crop90", "flipped")
N_COPIES = 200
HERE = DATA / "duplicates"


def make_copy(img: Image.Image, kind: str, rng: np.random.Generator) -> tuple[Image.Image, str]:
    """(copy, file extension) of a 32 px RGB image."""
    w, h = img.size
    if kind == "resized":
        f = rng.uniform(0.5, 0.75)
        small = img.resize((max(1, round(w * f)), max(1, round(h * f))), Image.Resampling.BILINEAR)
        return small.resize((w, h), Image.Resampling.BILINEAR), ".png"
    if kind == "jpeg50":
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=50)
        return Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), ".jpg"
    if kind == "crop90":
        cw, ch = round(w * 0.9), round(h * 0.9)
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        return img.crop((x, y, x + cw, y + ch)), ".png"
    if kind == "flipped":
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), ".png"
    raise ValueError(kind)


def build(split: str = "train", seed: int = 0) -> tuple[Path, list[tuple[str, str, str, bool]]]:
    """The data folder (originals + copies) and the truth: (original path, copy path, kind, other class)."""
    here = HERE / split
    data, truth_file = here / "data", here / "pairs.csv"
    if data.is_dir() and truth_file.exists():
        rows = [line.split(",") for line in truth_file.read_text().splitlines()[1:]]
        return data, [(a, b, k, o == "1") for a, b, k, o in rows]
    originals = ensure_cifar10(here / "cifar10-2k", per_class=200, split=split)
    shutil.rmtree(data, ignore_errors=True)
    shutil.copytree(originals, data, ignore=shutil.ignore_patterns("truth.csv"))
    rng = np.random.default_rng(seed)
    files = sorted(p.relative_to(data).as_posix() for p in data.glob("*/*.png"))
    classes = sorted({f.split("/")[0] for f in files})
    chosen = rng.choice(len(files), N_COPIES, replace=False)
    truth = []
    for n, i in enumerate(chosen):
        src = files[i]
        kind = KINDS[n % len(KINDS)]
        other = (n // len(KINDS)) % 2 == 1
        cls = src.split("/")[0]
        target = classes[(classes.index(cls) + 1 + int(rng.integers(0, len(classes) - 1))) % len(classes)] if other else cls
        copy, ext = make_copy(Image.open(data / src).convert("RGB"), kind, rng)
        dst = f"{target}/copy_{n:03d}_{kind}{ext}"
        copy.save(data / dst, **({"quality": 95} if ext == ".jpg" else {}))
        truth.append((src, dst, kind, other))
    truth_file.write_text("original,copy,kind,other_class\n" + "".join(
        f"{a},{b},{k},{int(o)}\n" for a, b, k, o in truth))
    return data, truth


def cache(data: Path) -> Path:
    out = data.parent / "cache"
    if not (out / "intake.json").exists():
        prepare(scan(data, check="header"), out, image_size=32)
    return out


def phash_groups(images: np.ndarray, max_bits: int) -> np.ndarray:
    """The baseline: 64-bit DCT hashes (pHash) of each image and its mirror, all pairs within `max_bits`."""
    grey = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)

    def bits(g: np.ndarray) -> np.ndarray:
        low = dctn(g, type=2, axes=(1, 2), norm="ortho")[:, :8, :8].reshape(len(g), -1)
        return np.packbits(low > np.median(low, axis=1, keepdims=True), axis=1).view(">u8").astype(np.uint64).ravel()

    h, m = bits(grey), bits(grey[:, :, ::-1])
    d = np.minimum(np.bitwise_count(h[:, None] ^ h[None, :]), np.bitwise_count(h[:, None] ^ m[None, :]))
    d = np.minimum(d, d.T)
    i, j = np.nonzero(np.triu(d <= max_bits, 1))
    return groups_of(len(images), np.stack([i, j], axis=1))


def pair_set(group: np.ndarray) -> set[tuple[int, int]]:
    pairs = set()
    for g in np.unique(group[group >= 0]):
        members = np.flatnonzero(group == g)
        pairs |= {(int(a), int(b)) for k, a in enumerate(members) for b in members[k + 1:]}
    return pairs


def row(name: str, found: set, truth: set, truth_rows: list, index: dict) -> str:
    tp = len(found & truth)
    recall = {kind: np.mean([tuple(sorted((index[a], index[b]))) in found for a, b, k, _ in truth_rows if k == kind])
              for kind in KINDS}
    return (f"| {name} | {len(found)} | {tp} | {len(found) - tp} | {tp / max(len(found), 1):.3f} | "
            f"{tp / len(truth):.3f} | " + " | ".join(f"{recall[k]:.2f}" for k in KINDS) + " |")


HEADER = ["| detector | pairs found | injected | other | precision | recall | " + " | ".join(KINDS) + " |",
          "|---|---:|---:|---:|---:|---:|" + "---:|" * len(KINDS)]


def extra_pairs_montage(found: set, truth: set, prepared, out: Path) -> int:
    """The found pairs that are no injected copy, side by side (upscaled 3x), for a person to judge."""
    extra = sorted(found - truth)
    if not extra:
        out.unlink(missing_ok=True)
        return 0
    side = 96
    sheet = Image.new("RGB", (len(extra) * (side + 8), 2 * side + 4), "white")
    for k, (a, b) in enumerate(extra):
        for r, i in enumerate((a, b)):
            tile = Image.fromarray(np.asarray(prepared.images[i])).resize((side, side), Image.Resampling.NEAREST)
            sheet.paste(tile, (k * (side + 8), r * (side + 4)))
    sheet.save(out)
    return len(extra)


def fit_run(data: Path) -> Path:
    run = data.parent / "run"
    cmd = [sys.executable, "-m", "engine", "fit", str(data), "--run-dir", str(run), "--device", "cpu", "--quiet",
           "--set", "embed.enabled=false"]
    if (run / "config.json").exists():
        cmd.append("--resume")
    subprocess.run(cmd, check=True, cwd=ROOT)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--split", choices=["train", "test"], default="train",
                    help="the CIFAR-10 split the 2,000 originals come from (test: a held-out check)")
    ap.add_argument("--features", type=Path, default=None, help="a run fitted on bench/data/duplicates/SPLIT/data")
    ap.add_argument("--fit", action="store_true", help="fit that run first (defaults, CPU, no map), then use it")
    args = ap.parse_args()
    data, truth_rows = build(args.split)
    prepared = load_prepared(cache(data))
    index = {p: i for i, p in enumerate(prepared.paths)}
    truth = {tuple(sorted((index[a], index[b]))) for a, b, _, _ in truth_rows}
    labels = prepared.labels
    images = np.asarray(prepared.images)
    conflict_truth = {tuple(sorted((index[a], index[b]))) for a, b, _, o in truth_rows if o}
    command = f"python bench/duplicates.py --split {args.split}" + (" --fit" if args.fit else "") + (
        f" --features {args.features}" if args.features else "")
    lines = [f"# Near-duplicates: injected copies of known CIFAR-10 {args.split} images", "", *machine_lines(),
             f"- command: `{command}`",
             f"- data: {len(prepared)} images = 2,000 CIFAR-10 {args.split} images (200 per class) + {N_COPIES} "
             f"copies of 200 of them ({', '.join(KINDS)}: 50 each; half filed under another class); "
             f"truth = the {len(truth)} (original, copy) pairs",
             "- scored on pairs (a group of three is three pairs); \"other\" = found pairs that are no injected copy, "
             "all counted as false in the precision", "",
             "## Perceptual hash (pHash) alone: the baseline", "", *HEADER]
    for bits in (4, 8, 10, 12):
        lines.append(row(f"pHash ≤ {bits} bits", pair_set(phash_groups(images, bits)), truth, truth_rows, index))
        print(lines[-1])
    lines += ["", "## CLeaN's check (engine/method/duplicates.py), no encoder", "", *HEADER]
    t0 = time.perf_counter()
    default = find_duplicates(images, labels)
    seconds = time.perf_counter() - t0
    for match, fine in ((0.85, 0.75), (0.9, 0.75), (0.9, 0.8), (0.92, 0.85)):
        dup = default if (match, fine) == (0.9, 0.8) else find_duplicates(images, labels, match=match,
                                                                          detail_match=fine)
        name = f"match ≥ {match}, detail ≥ {fine}" + (" (default)" if (match, fine) == (0.9, 0.8) else "")
        lines.append(row(name, pair_set(dup.group), truth, truth_rows, index))
        print(lines[-1])
    found = pair_set(default.group)
    conflicting = {(a, b) for a, b in found if default.conflict[a]}
    extra = extra_pairs_montage(found, truth, prepared, RESULTS / f"duplicates_{args.split}_other_pairs.png")
    lines += ["", f"Default: {len(conflict_truth & conflicting)} of the {len(conflict_truth)} copies filed under "
              f"another class are in a group marked `duplicate_conflict` ({int(default.conflict.sum())} images "
              f"marked in all); {seconds:.1f} s for the {len(prepared)} images (load average above).",
              f"The {extra} other pairs are drawn in `duplicates_{args.split}_other_pairs.png` (original above, "
              "match below)." if extra else "No other pair was found."]
    run = fit_run(data) if args.fit else args.features
    if run is not None:
        z = np.load(run / "predictions.npz")
        neighbours = nearest_neighbours(z["features"], 10)
        similarity = similarities(z["features"], neighbours)
        lines += ["", f"## With the encoder's neighbours as candidates too (`{run.name}/predictions.npz`, a default "
                  "CPU fit on these images)", "", *HEADER]
        for cosine in (0.98, 0.95, 0.9, 0.8):
            dup = find_duplicates(images, labels, neighbours=neighbours, similarity=similarity, cosine=cosine)
            lines.append(row(f"default check + neighbours at cosine ≥ {cosine}", pair_set(dup.group), truth,
                             truth_rows, index))
            print(lines[-1])
        close = similarity[:, 0]
        lines += ["", "Cosine similarity of the encoder features, injected pairs against all nearest neighbours: "
                  + ", ".join(f"{k} median {np.median([similarity_of(index[a], index[b], neighbours, similarity) for a, b, kk, _ in truth_rows if kk == k]):.3f}" for k in KINDS)
                  + f"; nearest neighbour of every image: median {np.median(close):.3f}, 99th percentile "
                  f"{np.percentile(close, 99):.3f}."]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / ("duplicates.md" if args.split == "train" else f"duplicates_{args.split}.md")
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


def similarity_of(a: int, b: int, neighbours: np.ndarray, similarity: np.ndarray) -> float:
    """The cosine similarity of a pair when one is among the other's neighbours, else nan."""
    for x, y in ((a, b), (b, a)):
        hit = np.flatnonzero(neighbours[x] == y)
        if len(hit):
            return float(similarity[x, hit[0]])
    return float("nan")


if __name__ == "__main__":
    main()
