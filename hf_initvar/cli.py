"""The `hf-initvar` command line: one subcommand per capability of the package.

Each subcommand is registered by a `_add_*` function that adds its parser and sets `handler`.
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hf-initvar", description=__doc__.splitlines()[0])
    subcommands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_subcommand in SUBCOMMANDS:
        add_subcommand(subcommands)

    args = parser.parse_args(argv)
    return args.handler(args) or 0


def _add_plot(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "plot", help="draw the layer x step heatmap and per-layer curves of a saved variance history"
    )
    parser.add_argument("run_dir", help="a training output_dir, or its variance/ folder")
    parser.add_argument("--out", default=None, help="folder for the PNGs (default: the history's folder)")
    parser.set_defaults(handler=_run_plot)


def _run_plot(args: argparse.Namespace) -> int:
    from hf_initvar.reporting.figures import draw_history_figures

    for path in draw_history_figures(args.run_dir, out_dir=args.out):
        print(path)
    return 0


SUBCOMMANDS = [_add_plot]


if __name__ == "__main__":
    sys.exit(main())
