"""Named seed streams: every random generator of a run is seeded from (run seed, stream name).

A stream name says who draws from it ("pretrain/order": the batch order of pre-training,
"split/mixture": the Gaussian mixture's initialisation). Seeds come from NumPy's SeedSequence over the
run seed and a SHA-256 of the name, so streams are independent of each other — no two share a seed,
as `seed + 1` offsets did when one stage's augmentation seed was the next stage's batch-order seed —
and a stream keeps its seed when other streams are added. The stages declare the streams they draw
from (engine.runs.stages); a test proves that no two streams of a run share a seed.

Seeds are 32-bit: NumPy's legacy RandomState, scikit-learn and umap-learn accept nothing larger, and
torch generators take them as they are. This module imports no torch.
"""

from __future__ import annotations

import hashlib

import numpy as np


def stream_seed(run_seed: int, stream: str) -> int:
    """The seed of the named stream of a run: an int in [0, 2**32), the same on every machine."""
    if run_seed < 0:
        raise ValueError(f"a run seed is >= 0, got {run_seed}")  # config validation refuses these first
    name = int.from_bytes(hashlib.sha256(stream.encode("utf-8")).digest(), "big")
    return int(np.random.SeedSequence([int(run_seed), name]).generate_state(1, dtype=np.uint32)[0])
