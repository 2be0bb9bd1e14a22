"""Handlers of `decisions export` and `decisions import` (review decisions out of a run and back in).

    decisions export RUN --out FILE [--overwrite]    path,sha256,action,label,decided_at,source
    decisions import RUN FILE [--no-memory]          match by sha256, then path; all rows or none

The format and the rules are engine.review.transfer's; this module parses and reports. Torch-free, and
light at import time: the parser is built for every command.
"""

from __future__ import annotations

import argparse
import sys
from argparse import Namespace
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("decisions", help="export a run's review decisions to a CSV, or import them")
    actions = p.add_subparsers(dest="decisions_command", required=True)
    e = actions.add_parser("export", help="write every decision of the run (path,sha256,action,label,decided_at,source)")
    e.add_argument("run_dir", type=Path)
    e.add_argument("--out", type=Path, required=True, help="a new CSV file")
    e.add_argument("--overwrite", action="store_true", help="replace an earlier decisions export at --out")
    i = actions.add_parser("import", help="write the decisions of a CSV into the run (all rows, or none)")
    i.add_argument("run_dir", type=Path)
    i.add_argument("file", type=Path, help="CSV with path,sha256,action,label,decided_at,source")
    i.add_argument("--no-memory", action="store_true", help="do not also remember them in the workspace memory")


def cmd_decisions(args: Namespace) -> int:
    from engine.errors import UserError
    from engine.review import transfer

    try:
        if args.decisions_command == "export":
            n = transfer.export_decisions(args.run_dir, args.out, overwrite=args.overwrite)
            print(f"wrote {n} {'decision' if n == 1 else 'decisions'} to {args.out}")
            return 0
        result = transfer.import_decisions(args.run_dir, args.file, remember=not args.no_memory,
                                           progress=_hashing_progress)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"imported {result.written} {'decision' if result.written == 1 else 'decisions'} into {args.run_dir}"
          + (f" ({result.replaced} replaced earlier decisions, kept in the audit log)" if result.replaced else "")
          + (f"; {result.unchanged} already as in the file" if result.unchanged else ""))
    if result.memory_error:
        print(f"warning: {result.memory_error}", file=sys.stderr)
    return 0


def _hashing_progress(done: int, total: int) -> None:
    if done in (0, total):
        print(f"hashing the run's images: {done}/{total}", file=sys.stderr)
