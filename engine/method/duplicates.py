"""Near-duplicates: one image filed twice, as the same pixels or as a resized, re-compressed, cropped or
flipped copy. Two copies that carry different given labels are a certain label error.

Everything comes from what a run already has: the decoded cache (RUN/data/images.npy, every image at the
working size) and, when given, each image's nearest neighbours in the encoder's feature space.

1. **Same pixels**: a digest of each image's row of the cache. Two files with the same bytes always
   decode to the same pixels, so this covers identical files (the sha256 of RUN/data/sha256.csv) as
   well as one picture saved twice in two formats.
2. **Candidates**: each image's `CANDIDATES` nearest neighbours among 8x8 colour thumbnails (as it is and
   mirrored), plus its neighbours in the encoder's feature space whose cosine similarity reaches
   `cosine`. Thumbnails find copies however little the encoder has learnt; the encoder adds copies
   whose thumbnails are crowded out by look-alikes.
3. **Check**: a candidate pair is a copy when the two images' 16x16 colour thumbnails correlate (Pearson,
   so brightness and contrast do not matter) at `match` or more and their detail (each thumbnail minus
   its 4x4 block means: edges and texture, not the layout) at `detail` or more, with one image taken as
   it is, mirrored, and through nine 90 % crop windows each way. The layout alone (sky above, sea below)
   is shared by many different photos; the detail is not. Nearly flat images (a blank frame) have no
   correlation to speak of: two of them are copies when their thumbnails differ by at most
   `FLAT_MAX_DIFF` grey levels on average.
4. **Stands out**: a copy must also beat every other candidate of either image by `MARGIN` in detail
   (a ratio test): look-alikes without copies (stripes, digits drawn alike) match many images equally
   well and would otherwise chain into one giant group. On 3,000 jittered digits this leaves 192 groups,
   each of one true digit (before: one group of 2,204). A cost: a near copy whose original has a second
   near copy (three versions of one picture) may be missed; exact copies are always found.

A perceptual hash (pHash: 64 bits from the DCT) was the first candidate for step 3 and misses crops: a
90 % crop of a 32 px image moves the hash by 10-14 bits, where two different images start (recall 0.08
on crops at 8 bits, bench/results/duplicates.md).

Groups are the connected components of the pairs (scipy's union-find, `connected_components`), so a copy
of a copy joins the same group. numpy, scipy, scikit-learn and Pillow; no torch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from sklearn.neighbors import NearestNeighbors

from engine.review.findings import NO_GROUP

THUMB = 16  # side of the thumbnails the check compares
CANDIDATE_THUMB = 8  # side of the thumbnails the candidate search compares
DETAIL_BLOCK = 4  # detail = thumbnail minus its DETAIL_BLOCK x DETAIL_BLOCK block means
CROP = 0.9  # crop windows of the check: this share of each side ...
CROP_POSITIONS = 3  # ... at 3 x 3 positions
CANDIDATES = 5  # thumbnail neighbours per image and orientation
FLAT_MAX_DIFF = 2.0  # mean absolute difference (0-255) under which two thumbnails are the same picture
MATCH = 0.90  # defaults of EvidenceConfig, measured on bench/duplicates.py
DETAIL = 0.80
# A copy stands out: its detail correlates this much better than any other candidate of either image
# (Lowe's ratio test, as a difference). Look-alikes without copies (stripes, digits drawn alike) match many
# images equally well and chain into one giant group otherwise. An exact copy (the same pixels) is no rival.
MARGIN = 0.05


@dataclass(frozen=True)
class Duplicates:
    group: np.ndarray  # (N,) int64: the group of each image, NO_GROUP (-1) for an image with no copy
    conflict: np.ndarray  # (N,) int8: 1 where the image's group carries more than one given label
    pairs: np.ndarray  # (P, 2) int64 i < j: the pairs found to be copies

    @property
    def n_groups(self) -> int:
        return int(self.group.max()) + 1 if len(self.group) else 0


# ----------------------------------------------------------------------------- thumbnails


def area_matrix(start: float, length: float, size_in: int, size_out: int = THUMB) -> np.ndarray:
    """(size_out, size_in) float32: output pixel k is the area average of the input interval
    [start + k * length / size_out, start + (k + 1) * length / size_out) (Pillow's BOX filter)."""
    edges = start + np.arange(size_out + 1) * (length / size_out)
    lo, hi = edges[:-1, None], edges[1:, None]
    pixel = np.arange(size_in)[None, :]
    overlap = np.clip(np.minimum(hi, pixel + 1) - np.maximum(lo, pixel), 0.0, None)
    return (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)


def view_matrices(side: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, columns), each (V, THUMB, side): the views of the check as area averages. View 0 is the
    whole image, views 1-9 the CROP_POSITIONS^2 crop windows of CROP x CROP; then the same ten of the
    mirror image (columns reversed)."""
    cut = side * CROP
    starts = np.linspace(0.0, side - cut, CROP_POSITIONS)
    boxes = [(0.0, float(side), 0.0, float(side))] + [(y, cut, x, cut) for y in starts for x in starts]
    rows = np.stack([area_matrix(y, h, side) for y, h, _, _ in boxes])
    cols = np.stack([area_matrix(x, w, side) for _, _, x, w in boxes])
    return np.concatenate([rows, rows]), np.concatenate([cols, cols[:, :, ::-1]])


def views(images: np.ndarray) -> np.ndarray:
    """(B, V, THUMB, THUMB, 3) float32 thumbnails of (B, S, S, 3) uint8 images through every view."""
    rows, cols = view_matrices(images.shape[1])
    return through(np.asarray(images, np.float32), rows, cols)


def through(x: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(B, V, T, T, 3): rows[v] @ x[b, :, :, c] @ cols[v].T for every view, as two matrix products."""
    b, s = x.shape[:2]
    v, t = rows.shape[:2]
    tall = np.tensordot(rows, x, axes=([2], [1]))  # (V, T, B, S, 3): the rows done
    tall = tall.transpose(0, 1, 2, 4, 3).reshape(v, t * b * 3, s)
    out = np.matmul(tall, cols.transpose(0, 2, 1))  # (V, T*B*3, T): the columns done
    return out.reshape(v, t, b, 3, t).transpose(2, 0, 1, 4, 3)


def plain_thumbnails(images: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """(N, THUMB, THUMB, 3) float32 thumbnails of whole images (in chunks: the cache may be memory-mapped)."""
    if len(images) == 0:
        return np.zeros((0, THUMB, THUMB, 3), np.float32)
    rows, cols = view_matrices(images.shape[1])
    return np.concatenate([through(np.asarray(images[i:i + chunk], np.float32), rows[:1], cols[:1])[:, 0]
                           for i in range(0, len(images), chunk)])


def unit(x: np.ndarray) -> np.ndarray:
    """Rows (flattened) minus their mean, of length 1: their dot product is the Pearson correlation."""
    x = x.reshape(len(x), -1).astype(np.float32)
    x = x - x.mean(axis=1, keepdims=True)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)


def detail(thumbs: np.ndarray) -> np.ndarray:
    """(M, THUMB, THUMB, 3) thumbnails minus their DETAIL_BLOCK x DETAIL_BLOCK block means."""
    m, b = len(thumbs), THUMB // DETAIL_BLOCK
    blocks = thumbs.reshape(m, DETAIL_BLOCK, b, DETAIL_BLOCK, b, 3)
    return (blocks - blocks.mean(axis=(2, 4), keepdims=True)).reshape(m, THUMB, THUMB, 3)


def shrunk(thumbs: np.ndarray, side: int = CANDIDATE_THUMB) -> np.ndarray:
    f = THUMB // side
    return thumbs.reshape(len(thumbs), side, f, side, f, 3).mean(axis=(2, 4))


# ----------------------------------------------------------------------------- pairs


def first_of_kind(images: np.ndarray) -> np.ndarray:
    """(N,) int64: the first image with exactly the same pixels as each image (itself when unique)."""
    first: dict[bytes, int] = {}
    return np.array([first.setdefault(hashlib.blake2b(np.ascontiguousarray(img).tobytes(), digest_size=16).digest(), i)
                     for i, img in enumerate(images)], dtype=np.int64)


def same_pixel_pairs(kind: np.ndarray) -> np.ndarray:
    """(P, 2) pairs i < j of images with exactly the same pixels (each to the first of its kind)."""
    later = np.flatnonzero(kind != np.arange(len(kind)))
    return np.stack([kind[later], later], axis=1).astype(np.int64).reshape(-1, 2)


def thumbnail_candidates(plain: np.ndarray, k: int = CANDIDATES) -> np.ndarray:
    """(P, 2) pairs i < j where j is among the k nearest 8x8 thumbnails of image i or of its mirror image."""
    n = len(plain)
    k = min(k, n - 1)
    if k < 1:
        return np.zeros((0, 2), np.int64)
    small = unit(shrunk(plain))
    search = NearestNeighbors(n_neighbors=k, algorithm="brute").fit(small)
    _, same = search.kneighbors()  # without the image itself
    _, mirrored = search.kneighbors(unit(shrunk(plain[:, :, ::-1])), n_neighbors=k)
    rows = np.repeat(np.arange(n), 2 * k)
    return normalised(np.stack([rows, np.concatenate([same, mirrored], axis=1).ravel()], axis=1))


def embedding_candidates(neighbours: np.ndarray, similarity: np.ndarray, min_cosine: float) -> np.ndarray:
    """(P, 2) pairs i < j where j is among i's nearest neighbours in the feature space (engine.method
    .neighbours: ids and their similarities, NaN for no neighbour) with a cosine similarity of at least
    `min_cosine`."""
    i, col = np.nonzero(similarity >= min_cosine)
    return normalised(np.stack([i, neighbours[i, col]], axis=1))


def pair_scores(images: np.ndarray, pairs: np.ndarray, plain: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(match, detail) of each pair (P,): the best correlation of the two images' thumbnails, and of their
    detail, with either image taken through any of its views (as it is, mirrored, crop windows)."""
    match = np.full(len(pairs), -1.0, np.float32)
    fine = np.full(len(pairs), -1.0, np.float32)
    if len(pairs) == 0:
        return match, fine
    whole, whole_detail = unit(plain), unit(detail(plain))
    # each pair both ways round: image a's views against b's thumbnail, and b's views against a's
    directed = np.concatenate([np.stack([pairs[:, 0], pairs[:, 1], np.arange(len(pairs))], axis=1),
                               np.stack([pairs[:, 1], pairs[:, 0], np.arange(len(pairs))], axis=1)])
    directed = directed[np.argsort(directed[:, 0], kind="stable")]
    sources = np.unique(directed[:, 0])
    bounds = np.searchsorted(directed[:, 0], np.r_[sources, np.iinfo(np.int64).max])
    for c in range(0, len(sources), chunk):
        batch = sources[c:c + chunk]
        seen = views(images[batch])
        m, v = seen.shape[:2]
        flat = seen.reshape(m * v, THUMB, THUMB, 3)
        seen_unit = unit(flat).reshape(m, v, -1)
        seen_detail = unit(detail(flat)).reshape(m, v, -1)
        for k in range(m):
            begin, end = bounds[c + k], bounds[c + k + 1]
            others, rows = directed[begin:end, 1], directed[begin:end, 2]
            np.maximum.at(match, rows, (seen_unit[k] @ whole[others].T).max(axis=0))
            np.maximum.at(fine, rows, (seen_detail[k] @ whole_detail[others].T).max(axis=0))
    return match, fine


def flat_pairs(pairs: np.ndarray, plain: np.ndarray) -> np.ndarray:
    """(P,) bool: pairs whose thumbnails differ by at most FLAT_MAX_DIFF grey levels on average."""
    if len(pairs) == 0:
        return np.zeros(0, bool)
    diff = np.abs(plain[pairs[:, 0]] - plain[pairs[:, 1]]).reshape(len(pairs), -1).mean(axis=1)
    return diff <= FLAT_MAX_DIFF


# ----------------------------------------------------------------------------- groups


def groups_of(n: int, pairs: np.ndarray) -> np.ndarray:
    """(N,) group id of each image: connected components of `pairs` with two or more members, numbered
    0, 1, ... in the order of their first member; NO_GROUP for an image in no pair."""
    if n == 0:
        return np.zeros(0, np.int64)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    sizes = np.bincount(component)
    in_group = sizes[component] >= 2
    group = np.full(n, NO_GROUP, np.int64)
    # numbered by first member (image order), whatever order scipy found the components in
    ids, first = np.unique(component[in_group], return_index=True)
    renumber = np.full(len(sizes), NO_GROUP, np.int64)
    renumber[ids[np.argsort(first, kind="stable")]] = np.arange(len(ids))
    group[in_group] = renumber[component[in_group]]
    return group


def conflicts(group: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N,) int8: 1 for every member of a group whose members carry more than one label."""
    out = np.zeros(len(group), np.int8)
    member = group != NO_GROUP
    if not member.any():
        return out
    g = group[member]
    codes = np.unique(np.asarray(labels)[member], return_inverse=True)[1].ravel()
    distinct = np.unique(np.stack([g, codes], axis=1), axis=0)
    n_labels = np.bincount(distinct[:, 0], minlength=int(g.max()) + 1)
    out[member] = (n_labels[g] > 1).astype(np.int8)
    return out


def find_duplicates(images: np.ndarray, labels: np.ndarray, *, neighbours: np.ndarray | None = None,
                    similarity: np.ndarray | None = None, cosine: float = 0.95, match: float = MATCH,
                    detail_match: float = DETAIL) -> Duplicates:
    """Every group of copies among `images` (N, S, S, 3) uint8, and whether its given `labels` (N,) disagree.

    neighbours, similarity: each image's nearest neighbours in the encoder's feature space and their cosine
        similarity (engine.method.neighbours: nearest_neighbours and similarities); those at `cosine` or
        more are candidates too.
    match, detail_match: the correlations of thumbnails and of their detail a candidate pair must reach.
    """
    n = len(images)
    plain = plain_thumbnails(images)
    candidates = [thumbnail_candidates(plain)]
    if neighbours is not None and similarity is not None:
        candidates.append(embedding_candidates(neighbours, similarity, cosine))
    pairs = np.unique(np.concatenate(candidates), axis=0)
    scores, fine = pair_scores(images, pairs, plain)
    kind = first_of_kind(images)
    copies = (((scores >= match) & (fine >= detail_match) & stands_out(pairs, fine, kind))
              | flat_pairs(pairs, plain))
    found = np.unique(np.concatenate([same_pixel_pairs(kind), pairs[copies]]), axis=0)
    group = groups_of(n, found)
    return Duplicates(group, conflicts(group, labels), found)


def stands_out(pairs: np.ndarray, fine: np.ndarray, kind: np.ndarray, margin: float = MARGIN) -> np.ndarray:
    """(P,) bool: the pair's detail correlation beats that of every other candidate pair of either image
    (exact copies, the same `kind` from first_of_kind, left out) by `margin`."""
    n = len(kind)
    if len(pairs) == 0:
        return np.zeros(0, bool)
    rival_fine = np.where(kind[pairs[:, 0]] != kind[pairs[:, 1]], fine, -np.inf)
    # the best and second-best rival score of each image, so a pair can leave itself out
    ends = np.concatenate([pairs[:, 0], pairs[:, 1]])
    values = np.concatenate([rival_fine, rival_fine])
    order = np.lexsort((-values, ends))
    ends, values = ends[order], values[order]
    first = np.searchsorted(ends, np.arange(n))
    count = np.bincount(ends, minlength=n)
    best = np.full(n, -np.inf)
    second = np.full(n, -np.inf)
    has = count > 0
    best[has] = values[first[has]]
    two = count > 1
    second[two] = values[first[two] + 1]

    def rival(i: np.ndarray) -> np.ndarray:
        # the image's best other pair: its second best where this pair is its best
        return np.where(rival_fine >= best[i], second[i], best[i])

    return fine - np.maximum(rival(pairs[:, 0]), rival(pairs[:, 1])) >= margin


def normalised(pairs: np.ndarray) -> np.ndarray:
    """(P, 2) int64 pairs as i < j, without self-pairs (duplicates of a pair are left to np.unique)."""
    pairs = np.sort(np.asarray(pairs, dtype=np.int64).reshape(-1, 2), axis=1)
    return pairs[pairs[:, 0] != pairs[:, 1]]
