"""Phase (b) checks itself against the person: it is kept only when it is measurably better.

Fine-tuning on a few hundred decisions and the phase-(a) pseudo-labels can make the classifier worse: on
CIFAR-10N worst (2,000 images, 200 decisions, 2 CPU cores) the fine-tuned suggestions were right for
41.6 % of the images against 58.7 % before it, and on the bundled sample its automatic changes were right
97.1 % of the time against 99.4 % (bench/results/review_loop_*.md). Nothing in the run could tell, since
(b) is judged by nothing it did not train on. So a share of the reviewed images (`check_share`) is held
out of phase (b) — it trains on neither their decided labels nor their pseudo-labels — and afterwards
both models are scored on the decided labels of those images:

* fixes  = held-out images (b) gets right and (a) got wrong; breaks = the other way round;
* (b) is kept when fixes > breaks and a one-sided sign test says so at `check_p` (the chance that a
  model no better than (a) fixes at least that many of the images where the two differ);
* otherwise the run keeps phase (a)'s model and re-splits it with every decision, which is what review
  alone gives: fine-tuning cannot make the labels worse than not fine-tuning.

Phase (a) is scored on its own classifier's probabilities: it trained on the given labels, so on kept
images it has seen the right answer; that favours (a), which is the side a wrong call should fall on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy.stats import binomtest


@dataclass(frozen=True)
class Check:
    """How phase (b) did against phase (a) on the held-out decisions."""

    n: int  # held-out reviewed images
    a_right: int  # of them, how many phase (a)'s top suggestion gets right (the decided label)
    b_right: int
    fixes: int  # (b) right where (a) was wrong
    breaks: int  # (a) right where (b) is wrong
    p_value: float | None  # one-sided sign test of fixes against breaks; None when they never differ
    kept: bool
    enabled: bool  # False: finetune.check_share = 0, (b) kept unchecked

    def to_dict(self) -> dict:
        return asdict(self)

    def sentence(self) -> str:
        """One line for the progress log and the Fine-tune page."""
        if not self.enabled:
            return "fine-tuning kept unchecked (finetune.check_share = 0)"
        if self.n == 0:
            return ("fine-tuning not kept: no reviewed image could be held out to check it against, so the run "
                    "keeps phase (a)'s model with your decisions")
        scores = (f"on {self.n:,} reviewed images it did not train on, fine-tuning agrees with you on "
                  f"{self.b_right:,} and phase (a) on {self.a_right:,}")
        if self.kept:
            return f"fine-tuning kept: {scores}"
        return f"fine-tuning not kept: {scores}, not clearly better, so the run keeps phase (a)'s model with your decisions"


def least_decisions(share: float, p_max: float) -> int:
    """The fewest reviewed images with which phase (b) can pass its check at all: the held-out share must
    hold m images, where m fixes and no break give a sign test p = 0.5^m <= p_max (4 images at 0.1).
    0 when the check is off (share 0)."""
    if share <= 0:
        return 0
    m = max(1, math.ceil(math.log2(1.0 / p_max))) if p_max < 1 else 1
    return math.ceil(m / share - 1e-9)


def check_rows(decided: np.ndarray, share: float, *, seed: int) -> np.ndarray:
    """(N,) bool: the reviewed images held out of phase (b), `share` of `decided` (rounded down), at
    random by `seed` so that a resumed phase (b) holds out the same images."""
    decided = np.asarray(decided, bool)
    rows = np.flatnonzero(decided)
    count = int(np.floor(len(rows) * max(0.0, share)))
    out = np.zeros(len(decided), bool)
    if count:
        out[np.random.default_rng(seed).choice(rows, count, replace=False)] = True
    return out


def judge(probs_a: np.ndarray, probs_b: np.ndarray, labels: np.ndarray, check: np.ndarray, *, p_max: float,
          enabled: bool = True) -> Check:
    """Score both phases' top suggestions on the held-out images' decided `labels` and decide which stays.

    Args:
        probs_a, probs_b: (N, C) class probabilities of phase (a) and of the fine-tuned network;
        labels: (N,) the trusted (decided) label indices; check: (N,) bool, the held-out images.
    """
    rows = np.flatnonzero(np.asarray(check, bool))
    y = np.asarray(labels)[rows]
    a_ok = np.asarray(probs_a)[rows].argmax(axis=1) == y
    b_ok = np.asarray(probs_b)[rows].argmax(axis=1) == y
    fixes, breaks = int((b_ok & ~a_ok).sum()), int((a_ok & ~b_ok).sum())
    p = binomtest(fixes, fixes + breaks, 0.5, alternative="greater").pvalue if fixes + breaks else None
    kept = (not enabled) or (fixes > breaks and p is not None and p <= p_max)
    return Check(n=len(rows), a_right=int(a_ok.sum()), b_right=int(b_ok.sum()), fixes=fixes, breaks=breaks,
                 p_value=None if p is None else round(float(p), 4), kept=bool(kept), enabled=enabled)
