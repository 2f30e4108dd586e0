"""Reproduce the log sweep of the initial weight std for a ReLU MLP on scikit-learn's digits.

    python examples/mlp_std_sweep.py                       # defaults: 31 stds x 3 seeds x {SGD, Adam}
    python examples/mlp_std_sweep.py --hidden_size 256 --num_hidden_layers 6 --epochs 20
    python examples/mlp_std_sweep.py --report_to wandb     # offline W&B run without credentials

Writes sweep.json, runs.csv and two PNGs to --output_dir and prints the measured bands next to the
band variance propagation predicts and the paper's 1e-2..1e-1. `hf-initvar sweep` is the same run.
"""

import argparse
import time

from hf_initvar.experiments.arguments import add_dataclass_arguments, dataclass_from_args
from hf_initvar.experiments.sweep import SweepConfig, format_band_table, run_sweep
from hf_initvar.reporting.mlp_plots import draw_sweep_figures, log_sweep_to_wandb


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_dataclass_arguments(parser, SweepConfig)
    parser.add_argument("--output_dir", default="runs/mlp_sweep", help="folder for results and PNGs")
    parser.add_argument("--report_to", nargs="*", default=[], choices=["wandb"], help="also log to W&B")
    args = parser.parse_args()

    started = time.perf_counter()
    config = dataclass_from_args(SweepConfig, args)
    summary = run_sweep(config, args.output_dir)
    figures = draw_sweep_figures(args.output_dir)

    counts = {}
    for run in summary["runs"]:
        key = (run["optimizer"], run["outcome"])
        counts[key] = counts.get(key, 0) + 1
    print(f"MLP {'-'.join(map(str, summary['layer_sizes']))} on {summary['dataset']['name']}")
    print("outcomes:", ", ".join(f"{opt}/{outcome}: {n}" for (opt, outcome), n in sorted(counts.items())))
    print(format_band_table(summary))
    for path in figures:
        print(path)
    if "wandb" in args.report_to:
        sync = log_sweep_to_wandb(args.output_dir)
        if sync:
            print(f"W&B ran offline; upload this run with:\n  {sync}")
    print(f"wall time: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
