"""Handler of `rerank RUN`: refit a head on the run's cached features with the review decisions, and
refresh every image's suggestion and the review order (engine.method.rerank).

    rerank RUN       writes RUN/rerank.csv and RUN/rerank.json; seconds on a CPU, no network runs

One re-ranking at a time per run (RUN/.rerank.lock, handed over by the app's launcher, engine.runs.jobs);
it may run beside a training worker. Exit codes as every command: 0 done, 2 bad input (one sentence), 1 a
bug. Torch-free.
"""

from __future__ import annotations

import argparse
import sys
from argparse import Namespace
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("rerank", help="re-rank the review queue with the decisions made so far (seconds, CPU)")
    p.add_argument("run_dir", type=Path)
    p.add_argument("--quiet", action="store_true", help="print nothing when it worked")


def cmd_rerank(args: Namespace) -> int:
    from engine.errors import UserError
    from engine.method.rerank import record_failure, rerank_run
    from engine.runs import worker_lock
    from engine.runs.rundir import RunDir

    run = RunDir(args.run_dir)
    if not run.samples.exists():
        print(f"error: {run.path} has no samples.csv: run `python -m engine fit` first", file=sys.stderr)
        return 2
    lock = (worker_lock.inherited(run, path=run.rerank_lock, variable=worker_lock.RERANK_FD_VARIABLE)
            or worker_lock.acquire(run, path=run.rerank_lock, wait_s=0.5))
    if lock is None:
        print(f"error: a re-ranking of {run.path} is already running", file=sys.stderr)
        return 2
    with lock:
        try:
            meta = rerank_run(run.path)
        except UserError as e:
            record_failure(run.path, str(e))
            print(f"error: {e}", file=sys.stderr)
            return 2
        except Exception as e:  # a bug: recorded for the app, then reported with its traceback by main()
            record_failure(run.path, f"{type(e).__name__}: {e} (a bug: the traceback is in {run.rerank_log.name} "
                                     "or on stderr)")
            raise
    if not args.quiet:
        n = meta["decisions"]
        print(f"re-ranked {meta['images']} images with {n} {'decision' if n == 1 else 'decisions'} "
              f"in {meta['seconds']:.1f} s")
    return 0
