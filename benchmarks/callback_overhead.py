"""Time VarianceCallback every step against plain training and `wandb.watch`, in one run.

    python benchmarks/callback_overhead.py                    # 12 layers, width 256, 5 rounds
    python benchmarks/callback_overhead.py --rounds 3 --steps_per_block 2 --num_threads 1

Trains the 12-layer GPT-2 of `examples/pretrain_gpt2.py` at width 256 (8 heads, context 128,
vocabulary 4096, batch 16) with AdamW, and alternates three variants in blocks of
`--steps_per_block` optimizer steps, rotating their order every round so that a change in machine
load hits all of them alike:

- `plain`: the training step, then a loss row sent to an offline W&B run;
- `callback`: the same plus `VarianceCallback(every_n_steps=1, per_head=True)`, dispatched with the
  W&B reporter through a `transformers` `CallbackHandler` as the `Trainer` does, so its statistics
  reach W&B and `history.csv`;
- `watch`: the same as `plain` with `wandb.watch(model, log="parameters", log_freq=1)` attached.

It prints, per variant, the median over rounds of (median step time of the variant's block) /
(median step time of the round's plain block) - 1, and separately the callback's own time per
logged step (`time.perf_counter` around its `on_step_end`) divided by the median plain step time.
Nothing leaves the machine: W&B runs offline.
"""

import argparse
import os
import statistics
import tempfile
import time

import torch

VARIANTS = ("plain", "callback", "watch")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5, help="rounds of the three variants (default: 5)")
    parser.add_argument("--steps_per_block", type=int, default=3, help="optimizer steps per variant per round (default: 3)")
    parser.add_argument("--warmup_steps", type=int, default=2, help="untimed steps before the first round (default: 2)")
    parser.add_argument("--n_layer", type=int, default=12, help="layers (default: 12)")
    parser.add_argument("--n_embd", type=int, default=256, help="width (default: 256)")
    parser.add_argument("--n_head", type=int, default=8, help="heads (default: 8)")
    parser.add_argument("--batch_size", type=int, default=16, help="sequences per step (default: 16)")
    parser.add_argument("--block_size", type=int, default=128, help="tokens per sequence (default: 128)")
    parser.add_argument("--num_threads", type=int, default=None, help="torch threads (default: torch's choice)")
    arguments = parser.parse_args()

    os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    if arguments.num_threads:
        torch.set_num_threads(arguments.num_threads)
    with tempfile.TemporaryDirectory() as directory:
        os.environ["WANDB_DIR"] = directory
        times, callback_seconds = run(arguments, directory)
    report(times, callback_seconds, arguments)


def run(arguments, directory: str) -> tuple[dict[str, list[list[float]]], list[float]]:
    import wandb
    from transformers import GPT2Config, GPT2LMHeadModel, TrainerControl, TrainerState, TrainingArguments
    from transformers.integrations import WandbCallback
    from transformers.trainer_callback import CallbackHandler

    from hf_initvar import VarianceCallback

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=arguments.n_layer, n_embd=arguments.n_embd, n_head=arguments.n_head,
        n_positions=arguments.block_size, vocab_size=4096,
    )  # fmt: skip
    model = GPT2LMHeadModel(config)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    args = TrainingArguments(output_dir=directory, report_to="wandb", use_cpu=True, logging_steps=1, run_name="callback-overhead")
    state, control = TrainerState(), TrainerControl()
    state.is_world_process_zero = state.is_local_process_zero = True
    reporter = WandbCallback()
    variance = VarianceCallback(every_n_steps=1, per_head=True, figures=False)
    plain_handler = CallbackHandler([reporter], model, None, optimizer, None)
    variance_handler = CallbackHandler([reporter, variance], model, None, optimizer, None)
    variance_handler.on_train_begin(args, state, control)

    generator = torch.Generator().manual_seed(0)

    def train_step() -> float:
        ids = torch.randint(0, config.vocab_size, (arguments.batch_size, arguments.block_size), generator=generator)
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.global_step += 1
        return loss.item()

    def step(variant: str) -> float:
        started = time.perf_counter()
        loss = train_step()
        if variant == "callback":
            callback_started = time.perf_counter()
            variance_handler.on_step_end(args, state, control)
            callback_seconds.append(time.perf_counter() - callback_started)
        else:
            plain_handler.on_step_end(args, state, control)
        plain_handler.on_log(args, state, control, logs={"loss": loss})
        return time.perf_counter() - started

    callback_seconds: list[float] = []
    for _ in range(arguments.warmup_steps):
        step("plain")
    times: dict[str, list[list[float]]] = {variant: [] for variant in VARIANTS}
    for round_index in range(arguments.rounds):
        order = VARIANTS[round_index % 3 :] + VARIANTS[: round_index % 3]
        for variant in order:
            if variant == "watch":
                wandb.run.watch(model, log="parameters", log_freq=1)
            times[variant].append([step(variant) for _ in range(arguments.steps_per_block)])
            if variant == "watch":
                wandb.run.unwatch(model)
        own = statistics.median(callback_seconds[-arguments.steps_per_block :])
        medians = ", ".join(f"{v} {statistics.median(times[v][-1]):.3f} s" for v in VARIANTS)
        print(f"round {round_index + 1}/{arguments.rounds}: {medians}; callback's own work {own * 1e3:.1f} ms", flush=True)
    variance_handler.on_train_end(args, state, control)
    wandb.finish()
    return times, callback_seconds


def report(times: dict[str, list[list[float]]], callback_seconds: list[float], arguments) -> None:
    plain = [statistics.median(block) for block in times["plain"]]
    plain_median = statistics.median(t for block in times["plain"] for t in block)
    print(
        f"\nGPT-2 {arguments.n_layer} layers, width {arguments.n_embd}, {arguments.n_head} heads, batch "
        f"{arguments.batch_size}x{arguments.block_size}; {arguments.rounds} rounds of {arguments.steps_per_block} steps per variant"
    )
    print(f"median plain step: {plain_median:.3f} s")
    for variant in ("callback", "watch"):
        ratios = [statistics.median(block) / base - 1 for block, base in zip(times[variant], plain)]
        print(
            f"{variant:>8}: extra step time, median of per-round ratios {statistics.median(ratios):+.2%} "
            f"(rounds: {', '.join(f'{r:+.1%}' for r in ratios)})"
        )
    own = statistics.median(callback_seconds)
    print(f"callback's own work per logged step: {own * 1e3:.1f} ms = {own / plain_median:.2%} of the median plain step")


if __name__ == "__main__":
    main()
