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


def _add_schemes(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "schemes",
        help="list the init schemes, or print the std a scheme intends for each role and layer of a model",
        description="Without a model: every registered init scheme with its arguments, formula and source. "
        "With --model (or a preset such as gpt2-124m): the intended std per role and layer.",
    )
    parser.add_argument("names", nargs="*", help="scheme names, and optionally a model preset (gpt2-124m)")
    parser.add_argument("--model", default=None, help="model preset or model_type: gpt2, llama, mistral, qwen2, gpt_neox, bert, roberta")
    parser.add_argument("--n_layer", type=int, default=None, help="number of blocks")
    parser.add_argument("--n_embd", type=int, default=None, help="model width")
    parser.add_argument("--n_head", type=int, default=None, help="attention heads (default: n_embd / 64)")
    parser.add_argument("--vocab_size", type=int, default=None, help="vocabulary size (default: the family's)")
    parser.add_argument("--init_args", default="", help="scheme arguments as JSON or key=value[,key=value]")
    parser.set_defaults(handler=_run_schemes)


def _run_schemes(args: argparse.Namespace) -> int:
    from hf_initvar.init import parse_init_args
    from hf_initvar.init.describe import describe_command

    try:
        text = describe_command(
            args.names,
            model=args.model,
            n_layer=args.n_layer,
            n_embd=args.n_embd,
            n_head=args.n_head,
            vocab_size=args.vocab_size,
            init_args=parse_init_args(args.init_args),
        )
    except ValueError as error:
        print(f"hf-initvar schemes: error: {error}", file=sys.stderr)
        return 2
    print(text)
    return 0


SUBCOMMANDS = [_add_plot, _add_schemes]


if __name__ == "__main__":
    sys.exit(main())
