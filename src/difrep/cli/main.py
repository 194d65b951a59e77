"""``difrep``: the command line. Subcommands live in their own modules; this file only routes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..data import UnreadableImageError
from ..features.cache import CacheError
from . import data, demo, evaluate, extract, info, pretrain, sample, sweep, train


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="difrep", description="Text-free diffusion models as representation learners.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (info, data, extract, evaluate, sweep, train, pretrain, sample, demo):
        module.register(sub)
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.run(args, extra) or 0)
    except (ValueError, FileNotFoundError, CacheError, UnreadableImageError, KeyError) as err:
        message = err.args[0] if isinstance(err, KeyError) and err.args else err
        print(f"difrep {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
