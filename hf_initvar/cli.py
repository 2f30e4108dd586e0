"""The `hf-initvar` command line: one subcommand per capability of the package.

Each subcommand is registered by a `_add_*` function that adds its parser and sets `handler`.
"""

from __future__ import annotations

import argparse
import sys
import time


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

    try:
        paths = draw_history_figures(args.run_dir, out_dir=args.out)
    except (FileNotFoundError, ValueError) as error:
        print(f"hf-initvar plot: error: {error}", file=sys.stderr)
        return 2
    for path in paths:
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


def _add_sweep(subcommands: argparse._SubParsersAction) -> None:
    from hf_initvar.experiments.arguments import add_dataclass_arguments
    from hf_initvar.experiments.sweep import SweepConfig

    parser = subcommands.add_parser(
        "sweep",
        help="log sweep of the initial weight std of a ReLU MLP: regimes, stability band, theory",
        description="Train one ReLU MLP per (std, seed, optimizer), all at once with stacked weights, and "
        "report the vanishing / stable / exploding / diverged regimes, the measured stability band with a "
        "95% CI over seeds, the band variance propagation predicts, and the paper's 1e-2..1e-1.",
    )
    add_dataclass_arguments(parser, SweepConfig)
    _add_experiment_output_arguments(parser, "runs/mlp_sweep")
    parser.set_defaults(handler=_run_sweep)


def _run_sweep(args: argparse.Namespace) -> int:
    from hf_initvar.experiments.sweep import SweepConfig, format_band_table, run_sweep
    from hf_initvar.reporting.mlp_plots import draw_sweep_figures, log_sweep_to_wandb

    started = time.perf_counter()
    result = _run_mlp_experiment(args, "sweep", SweepConfig, run_sweep)
    if result is None:
        return 2
    config, summary = result

    paths = draw_sweep_figures(args.output_dir)
    sizes = "-".join(map(str, summary["layer_sizes"]))
    grid_factor = (config.std_max / config.std_min) ** (1 / (config.num_stds - 1))
    print(f"{summary['dataset']['name']}, MLP {sizes}, {len(summary['runs'])} runs; grid step x{grid_factor:.3g}")
    print(format_band_table(summary))
    for path in [*paths, args.output_dir + "/sweep.json", args.output_dir + "/runs.csv"]:
        print(path)
    if "wandb" in args.report_to:
        sync = log_sweep_to_wandb(args.output_dir, project=args.wandb_project)
        if sync:
            print(f"W&B ran offline; upload this run with:\n  {sync}")
    print(f"wall time: {time.perf_counter() - started:.1f} s")
    return 0


def _add_compare(subcommands: argparse._SubParsersAction) -> None:
    from hf_initvar.experiments.arguments import add_dataclass_arguments
    from hf_initvar.experiments.compare import CompareConfig

    parser = subcommands.add_parser(
        "compare",
        help="Kaiming fan-in vs Xavier vs torch default on a ReLU MLP over seeds, with 95%% CIs",
        description="Train one ReLU MLP per (init scheme, seed) on identical data orders and report mean "
        "loss curves with 95% confidence intervals, steps to a loss threshold and final test accuracy.",
    )
    add_dataclass_arguments(parser, CompareConfig)
    _add_experiment_output_arguments(parser, "runs/kaiming_vs_xavier")
    parser.set_defaults(handler=_run_compare)


def _run_compare(args: argparse.Namespace) -> int:
    from hf_initvar.experiments.compare import CompareConfig, format_summary_table, run_compare
    from hf_initvar.reporting.mlp_plots import draw_compare_figures, log_compare_to_wandb

    started = time.perf_counter()
    result = _run_mlp_experiment(args, "compare", CompareConfig, run_compare)
    if result is None:
        return 2
    config, summary = result

    paths = draw_compare_figures(args.output_dir)
    sizes = "-".join(map(str, summary["layer_sizes"]))
    print(f"{summary['dataset']['name']}, MLP {sizes}, {config.optimizer} lr {config.learning_rate}, {config.epochs} epochs")
    print(format_summary_table(summary))
    for path in [*paths, args.output_dir + "/compare.json", args.output_dir + "/curves.csv", args.output_dir + "/summary.md"]:
        print(path)
    if "wandb" in args.report_to:
        sync = log_compare_to_wandb(args.output_dir, project=args.wandb_project)
        if sync:
            print(f"W&B ran offline; upload this run with:\n  {sync}")
    print(f"wall time: {time.perf_counter() - started:.1f} s")
    return 0


def _run_mlp_experiment(args: argparse.Namespace, command: str, config_class: type, run) -> tuple | None:
    """Build the experiment's config from the flags and run it; print the error and return None on invalid input."""
    from hf_initvar.experiments.arguments import dataclass_from_args

    try:
        _set_threads(args.num_threads)
        config = dataclass_from_args(config_class, args)
        summary = run(config, args.output_dir, progress=not args.no_progress)
    except ValueError as error:
        print(f"hf-initvar {command}: error: {error}", file=sys.stderr)
        return None
    return config, summary


def _add_experiment_output_arguments(parser: argparse.ArgumentParser, default_dir: str) -> None:
    parser.add_argument("--output_dir", default=default_dir, help=f"folder for results and PNGs (default: {default_dir})")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    parser.add_argument(
        "--report_to", nargs="*", default=[], choices=["wandb"],
        help="also log to these trackers; W&B runs offline without credentials (default: none)",
    )
    parser.add_argument("--wandb_project", default="hf-initvar", help="W&B project name (default: hf-initvar)")
    parser.add_argument(
        "--num_threads", type=int, default=None,
        help="torch intra-op threads; 1 can be several times faster on a machine whose cores are busy (default: torch's)",
    )


def _set_threads(num_threads: int | None) -> None:
    if num_threads is not None and num_threads < 1:
        raise ValueError(f"--num_threads must be at least 1, got {num_threads}")
    if num_threads is not None:
        import torch

        torch.set_num_threads(num_threads)


def _add_equilibration_rule_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tolerance", type=float, default=0.05, help="relative half-width of the band (default: 0.05, i.e. ±5%%)")
    parser.add_argument("--final_fraction", type=float, default=0.2, help="share of the run that forms the band window (default: 0.2)")
    parser.add_argument("--early_fraction", type=float, default=0.2, help="share of the run for the early growth fit (default: 0.2)")
    parser.add_argument("--smooth", type=int, default=1, help="points of the rolling median before the band test, odd (default: 1, none)")


def _equilibration_rule(args: argparse.Namespace):
    from hf_initvar.reporting.analysis import EquilibrationRule

    return EquilibrationRule(
        tolerance=args.tolerance, final_fraction=args.final_fraction, early_fraction=args.early_fraction, smooth=args.smooth
    )


def _add_report(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "report",
        help="write a Markdown report of a run's Q/K/V variance: heatmaps, curves, equilibration table, depth verdict",
        description="Analyse a saved variance history (per-layer early growth, equilibration step and band, "
        "Spearman correlation with depth) and write report.md with its PNGs and equilibration.csv.",
    )
    parser.add_argument("run_dir", help="a training output_dir, or its variance/ folder")
    parser.add_argument("--out", default=None, help="report folder (default: RUN_DIR/report)")
    _add_equilibration_rule_arguments(parser)
    parser.set_defaults(handler=_run_report)


def _run_report(args: argparse.Namespace) -> int:
    from hf_initvar.reporting.report import write_report

    try:
        report = write_report(args.run_dir, out_dir=args.out, rule=_equilibration_rule(args))
    except (FileNotFoundError, ValueError) as error:
        print(f"hf-initvar report: error: {error}", file=sys.stderr)
        return 2
    for verdict in report.analysis.verdicts():
        print(verdict)
    for path in report.files:
        print(path)
    return 0


def _add_compare_runs(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "compare-runs",
        help="overlay the Q/K/V variance and equilibration of several runs (e.g. init schemes)",
        description="Write compare.md, compare_curves.png, compare_equilibration.png and compare.csv for two or more runs.",
    )
    parser.add_argument("run_dirs", nargs="+", help="training output_dirs or variance/ folders")
    parser.add_argument("--out", default="runs/compare", help="output folder (default: runs/compare)")
    parser.add_argument("--labels", default=None, help="comma-separated run names (default: each run's init scheme)")
    _add_equilibration_rule_arguments(parser)
    parser.set_defaults(handler=_run_compare_runs)


def _run_compare_runs(args: argparse.Namespace) -> int:
    from hf_initvar.reporting.report import compare_runs

    labels = [label.strip() for label in args.labels.split(",")] if args.labels else None
    try:
        paths = compare_runs(args.run_dirs, args.out, labels=labels, rule=_equilibration_rule(args))
    except (FileNotFoundError, ValueError) as error:
        print(f"hf-initvar compare-runs: error: {error}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


SUBCOMMANDS = [_add_plot, _add_schemes, _add_sweep, _add_compare, _add_report, _add_compare_runs]


if __name__ == "__main__":
    sys.exit(main())
