"""``difrep``: the command line. Subcommands live in their own modules; this file only routes."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..distributed import close_distributed
from ..errors import UserError
from . import data, demo, evaluate, extract, info, new_dit, pretrain, sample, scenes_study, show, study, sweep, train

BUG_REPORT = ("difrep: this is a bug in difrep, not in your input. Please report it on the project's issue "
              "tracker with the command you ran and the traceback above.")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="difrep", description="Text-free diffusion models as representation learners.")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (info, new_dit, data, extract, evaluate, sweep, show, train, pretrain, sample, demo, study,
                   scenes_study):
        module.register(sub)
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "accepts_extra", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return int(args.run(args, extra) or 0)
    except UserError as err:
        print(f"difrep {args.command}: error: {err}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (difrep ... | head): not an error
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - keeps Python's exit flush quiet
        return 0
    except Exception:
        import traceback

        traceback.print_exc()
        print(BUG_REPORT, file=sys.stderr)
        return 1
    finally:
        close_distributed()


if __name__ == "__main__":
    sys.exit(main())
