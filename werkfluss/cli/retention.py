"""``werkfluss prune``: delete finished runs now (workers also do it on their own).

    werkfluss prune [--older-than 14d] [--dry-run] [--batch-size 500]

Deletes completed, failed and cancelled runs that finished longer ago than
``--older-than``, with their log, hooks and payloads, in batches (one short
transaction each). A finished child run whose parent is still going and has
not received its outcome is kept. Workers prune on their ``--retention``
setting; this command waits for its turn if one of them is pruning.
"""

from __future__ import annotations

import argparse
from typing import Any

from werkfluss.durations import parse_duration
from werkfluss.engine import Engine
from werkfluss.errors import InvalidArgument


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    prune = sub.add_parser(
        "prune", parents=[common], help="delete finished runs older than a retention period",
        description="Delete completed, failed and cancelled runs that finished longer ago than "
                    "--older-than, with their log, hooks and payloads, in small batches.",
    )
    prune.add_argument("--older-than", default="14d", metavar="DURATION",
                       help="how long ago a run must have finished, e.g. 12h, 30d, 2w (default 14d)")
    prune.add_argument("--dry-run", action="store_true",
                       help="count the runs that would be deleted; delete nothing")
    prune.add_argument("--batch-size", type=int, default=500, metavar="N",
                       help="runs deleted per transaction, 1 to 10000 (default 500)")
    prune.set_defaults(handler=cmd_prune, check=check_prune)


def check_prune(args: argparse.Namespace) -> None:
    args.older_than_seconds = parse_duration(args.older_than, what="--older-than")
    if not 1 <= args.batch_size <= 10000:
        raise InvalidArgument(f"--batch-size must be from 1 to 10000, got {args.batch_size}")


def _runs(count: int) -> str:
    return f"{count} finished run{'' if count == 1 else 's'}"


async def cmd_prune(engine: Engine, args: argparse.Namespace) -> int:
    age = args.older_than
    if args.dry_run:
        count = await engine.prune(args.older_than_seconds, dry_run=True)
        print(f"would delete {_runs(count)} older than {age}, with their log, hooks and payloads "
              "(dry run: nothing deleted)")
        return 0
    deleted = await engine.prune(args.older_than_seconds, batch_size=args.batch_size)
    if deleted:
        print(f"deleted {_runs(deleted)} older than {age}, with their log, hooks and payloads")
    else:
        print(f"nothing to prune: no finished run is older than {age}")
    return 0
