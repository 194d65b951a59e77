"""``difrep``: the command line. Subcommands live in their own modules; this file only routes."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import data, demo, info


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="difrep", description="Text-free diffusion models as representation learners.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (info, data, demo):
        module.register(sub)
    args, extra = parser.parse_known_args(argv)
    try:
        return int(args.run(args, extra) or 0)
    except (ValueError, FileNotFoundError) as err:
        print(f"difrep {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
