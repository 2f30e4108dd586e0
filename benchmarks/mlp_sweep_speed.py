"""Time the stacked MLP sweep against one-model-at-a-time training, in one run.

    python benchmarks/mlp_sweep_speed.py                  # 24 stds x 3 seeds, 64-256x6-10 on digits
    python benchmarks/mlp_sweep_speed.py --rounds 3 --epochs 2 --num_threads 1

For the same 72 models (24 log-spaced stds x 3 seeds) it times, alternating the variants within
each round so that a change in machine load hits all of them alike:

- the stacked sweep (`train_stacked`: one bmm per layer for all models),
- a tight PyTorch loop training the models one after another (`train_one_model`),
- the same models one after another through the Hugging Face `Trainer`,
- a large float32 matmul, whose FLOP rate is the ceiling the stacked sweep is compared with.

Before the timed rounds, each variant runs once untimed (the Trainer on its first 3 models only),
so that one-time costs such as the first allocations of the step's buffers and the math library's
thread start-up fall on no timed round. It prints the median over rounds of each time, the per-round ratios, and the stacked sweep's FLOP
rate as a fraction of the matmul rate. The FLOP count is that of the matmuls only (forward 2P,
backward 4P minus the first layer's input gradient, per sample, for P weights).
"""

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from hf_initvar.experiments.batched import StackedMLP, TrainingSchedule, train_one_model, train_stacked
from hf_initvar.experiments.mlp_data import load_classification_data
from hf_initvar.models.mlp import ReluMLP, ReluMLPConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num_stds", type=int, default=24, help="log-spaced stds from 1e-2 to 1 (default: 24)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per std (default: 3)")
    parser.add_argument("--hidden_size", type=int, default=256, help="hidden width (default: 256)")
    parser.add_argument("--num_hidden_layers", type=int, default=6, help="hidden layers (default: 6)")
    parser.add_argument("--epochs", type=int, default=1, help="epochs per model per variant (default: 1)")
    parser.add_argument("--batch_size", type=int, default=64, help="samples per step (default: 64)")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of alternating variants (default: 2)")
    parser.add_argument("--matmul_size", type=int, default=2048, help="side of the square reference matmul (default: 2048)")
    parser.add_argument("--skip_trainer", action="store_true", help="leave out the Trainer variant (the slowest)")
    parser.add_argument("--num_threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.num_threads is not None:
        torch.set_num_threads(args.num_threads)

    data = load_classification_data("digits")
    stds = np.logspace(-2, 0, args.num_stds)
    grid = [(float(std), seed) for std in stds for seed in range(args.seeds)]
    models = build_models(grid, data, args)
    schedule = TrainingSchedule("sgd", 0.01, args.epochs, args.batch_size)
    flops = count_flops(models[0], len(data.train_labels), args.epochs) * len(models)

    variants = build_variants(models, grid, data, schedule, args)
    for name, variant in build_variants(models, grid, data, schedule, args, trainer_models=3).items():
        started = time.perf_counter()
        variant()
        print(f"warm-up: {name} {time.perf_counter() - started:.1f} s (untimed)", flush=True)

    times = {name: [] for name in variants}
    matmul_rates = []
    names = list(variants)
    for round_index in range(args.rounds):
        # Rotate the order each round so no variant always runs first (cold caches) or last.
        order = names[round_index % len(names) :] + names[: round_index % len(names)]
        for name in order:
            times[name].append(variants[name]())
            matmul_rates.append(matmul_rate(args.matmul_size))
        print(f"round {round_index + 1}: " + ", ".join(f"{n} {times[n][-1]:.1f} s" for n in names), flush=True)

    report(times, matmul_rates, flops, models, data, args)


def build_variants(models, grid, data, schedule, args, trainer_models: int | None = None) -> dict:
    """Return the timed variants by name; the Trainer one trains only the first `trainer_models` models when given."""
    variants = {
        "stacked sweep": lambda: time_stacked(models, grid, data, schedule),
        "tight loop": lambda: time_loop(models, grid, data, schedule),
    }
    if not args.skip_trainer:
        count = len(models) if trainer_models is None else trainer_models
        variants["HF Trainer"] = lambda: time_trainer(models[:count], grid[:count], data, args)
    return variants


def build_models(grid, data, args) -> list[ReluMLP]:
    models = []
    for std, seed in grid:
        torch.manual_seed(seed)
        config = ReluMLPConfig(
            input_size=data.num_features, hidden_size=args.hidden_size, num_hidden_layers=args.num_hidden_layers,
            num_labels=data.num_classes, init_scheme="normal", init_args={"std": std},
        )
        models.append(ReluMLP(config))
    return models


def count_flops(model: ReluMLP, num_samples: int, epochs: int) -> float:
    weights = [layer.weight.numel() for layer in model.layers]
    per_sample = 2 * sum(weights) + 4 * sum(weights) - 2 * weights[0]
    return float(per_sample) * num_samples * epochs


def time_stacked(models, grid, data, schedule) -> float:
    stacked = StackedMLP(models)
    started = time.perf_counter()
    train_stacked(stacked, data.train_features, data.train_labels, [seed for _, seed in grid], schedule)
    return time.perf_counter() - started


def time_loop(models, grid, data, schedule) -> float:
    import copy

    fresh = [copy.deepcopy(model) for model in models]
    started = time.perf_counter()
    for model, (_, seed) in zip(fresh, grid):
        train_one_model(model, data.train_features, data.train_labels, seed, schedule)
    return time.perf_counter() - started


def time_trainer(models, grid, data, args) -> float:
    import copy

    import transformers
    from transformers import PrinterCallback, Trainer, TrainingArguments

    transformers.utils.logging.set_verbosity_error()
    train, _ = data.to_datasets()
    fresh = [copy.deepcopy(model) for model in models]
    with tempfile.TemporaryDirectory() as output_dir:
        started = time.perf_counter()
        for model, (_, seed) in zip(fresh, grid):
            training_args = TrainingArguments(
                output_dir=output_dir, per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs,
                learning_rate=0.01, optim="sgd", lr_scheduler_type="constant", weight_decay=0.0, max_grad_norm=0.0,
                seed=seed, report_to=[], save_strategy="no", logging_strategy="no", disable_tqdm=True,
                use_cpu=True, dataloader_num_workers=0, logging_nan_inf_filter=False,
            )
            trainer = Trainer(model=model, args=training_args, train_dataset=train)
            trainer.remove_callback(PrinterCallback)  # it prints a metrics line per model
            trainer.train()
        return time.perf_counter() - started


def matmul_rate(size: int, repeats: int = 3) -> float:
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    a @ b  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2.0 * size**3 * repeats / (time.perf_counter() - started)


def report(times, matmul_rates, flops, models, data, args) -> None:
    sizes = models[0].config.layer_sizes
    median = {name: statistics.median(values) for name, values in times.items()}
    matmul = statistics.median(matmul_rates)
    stacked_rate = flops / median["stacked sweep"]
    print()
    print(
        f"{len(models)} models ({args.num_stds} stds x {args.seeds} seeds), MLP {'-'.join(map(str, sizes))}, "
        f"digits {len(data.train_labels)} train samples, {args.epochs} epoch(s), batch {args.batch_size}, "
        f"SGD; torch threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}; "
        f"medians of {args.rounds} round(s)"
    )
    print(f"{'variant':<16} {'seconds':>9} {'GFLOP/s':>9} {'time / stacked':>15}")
    for name, seconds in median.items():
        print(f"{name:<16} {seconds:9.2f} {flops / seconds / 1e9:9.1f} {seconds / median['stacked sweep']:15.2f}")
    print(f"{'fp32 matmul':<16} {'':>9} {matmul / 1e9:9.1f}   ({args.matmul_size}x{args.matmul_size}, median of {len(matmul_rates)})")
    print()
    pair_ratios = [loop / stacked for loop, stacked in zip(times["tight loop"], times["stacked sweep"])]
    print(f"speedup of the stacked sweep over the tight loop: {statistics.median(pair_ratios):.2f}x "
          f"(per round: {', '.join(f'{r:.2f}' for r in pair_ratios)}; target >= 2x)")
    if "HF Trainer" in times:
        trainer_ratios = [t / s for t, s in zip(times["HF Trainer"], times["stacked sweep"])]
        print(f"speedup over one-by-one HF Trainer: {statistics.median(trainer_ratios):.2f}x")
    print(f"stacked sweep FLOP rate / fp32 matmul rate: {stacked_rate / matmul:.0%} (target >= 70%)")


if __name__ == "__main__":
    main()
