#!/usr/bin/env python
"""Pretrain a GPT-2 from scratch and track the variance of every layer's Q, K and V weights.

With no arguments it trains the `quick` preset (12 layers, width 128) on text that ships with
Python, on the CPU, in a few minutes:

    accelerate launch examples/pretrain_gpt2.py

On GPUs, the model of arXiv:2510.09423 (GPT-2 124M) on a Hub dataset:

    accelerate launch examples/pretrain_gpt2.py --preset gpt2-124m \
        --dataset_name Skylion007/openwebtext --report_to wandb

Every `TrainingArguments` flag works (`--max_steps`, `--learning_rate`, `--gradient_accumulation_steps`,
`--report_to`, ...); a preset only changes their defaults. Outputs in `--output_dir`: the model and
its tokenizer, `variance/history.csv` with its figures, TensorBoard events in `runs/`, an offline
W&B run in `wandb/` when W&B is installed, and `run_summary.json`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import transformers
from transformers import (
    AutoTokenizer,
    GPT2LMHeadModel,
    HfArgumentParser,
    Trainer,
    TrainingArguments,
    default_data_collator,
    set_seed,
)

from hf_initvar import VarianceCallback
from hf_initvar.experiments.lm_data import CORPORA, DEFAULT_CORPUS, load_text_datasets, pack_into_blocks, text_column, train_or_load_tokenizer
from hf_initvar.init import apply_init, parse_init_args
from hf_initvar.models.gpt2 import PRESETS, build_gpt2_config, get_preset, parse_config_overrides

logger = logging.getLogger("pretrain_gpt2")


@dataclass
class ModelArguments:
    preset: str = field(default="quick", metadata={"help": f"Model size and training defaults: {', '.join(PRESETS)}."})
    config_overrides: str | None = field(
        default=None, metadata={"help": "GPT2Config fields to override, e.g. 'n_embd=256,n_head=8,resid_pdrop=0.0'."}
    )
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer name or path; default: a byte-level BPE trained on the training split."}
    )
    vocab_size: int | None = field(default=None, metadata={"help": "Vocabulary size of the trained tokenizer (default: the preset's)."})
    init_scheme: str = field(default="gpt2", metadata={"help": "Init scheme from the registry (`hf-initvar schemes` lists them)."})
    init_std: float | None = field(default=None, metadata={"help": "Shortcut for the scheme's `std` argument, e.g. with --init_scheme normal."})
    init_args: str | None = field(default=None, metadata={"help": "Scheme arguments as JSON or key=value pairs, e.g. 'std=0.01'."})


@dataclass
class DataArguments:
    corpus: str = field(default=DEFAULT_CORPUS, metadata={"help": f"Built-in corpus used when no data flag is given: {', '.join(CORPORA)}."})
    dataset_name: str | None = field(default=None, metadata={"help": "A `datasets` dataset name (Hub or local)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "The configuration of --dataset_name."})
    train_file: str | None = field(default=None, metadata={"help": "A .txt, .json/.jsonl or .csv training file."})
    validation_file: str | None = field(default=None, metadata={"help": "A validation file of the same kind."})
    validation_split_percentage: float = field(
        default=5.0, metadata={"help": "Percent of the data held out for validation when no validation split exists."}
    )
    block_size: int | None = field(default=None, metadata={"help": "Tokens per training block (default: the model's context)."})
    max_eval_samples: int | None = field(default=256, metadata={"help": "Evaluate on at most this many blocks (all: -1)."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenization."})


@dataclass
class TrackingArguments:
    variance_every_n_steps: int = field(default=1, metadata={"help": "Log Q/K/V statistics every N optimizer steps."})
    variance_per_head: bool = field(default=False, metadata={"help": "Also log per-head statistics."})
    histogram_steps: str | None = field(
        default=None, metadata={"help": "Steps at which to record weight histograms, e.g. '0,50,200,1000' (none by default)."}
    )
    variance_report: bool = field(default=True, metadata={"help": "Write the variance report to <output_dir>/report at the end of training."})
    histogram_layers: str = field(default="0,-1", metadata={"help": "Layers whose Q/K/V histograms are recorded, e.g. '0,5,-1'."})


def main() -> None:
    started = time.perf_counter()
    model_args, data_args, tracking_args, training_args = parse_arguments(sys.argv[1:])
    configure_logging(training_args)
    set_seed(training_args.seed)
    configure_wandb(training_args)

    raw = load_text_datasets(
        corpus=data_args.corpus,
        dataset_name=data_args.dataset_name,
        dataset_config_name=data_args.dataset_config_name,
        train_file=data_args.train_file,
        validation_file=data_args.validation_file,
        validation_split_percentage=data_args.validation_split_percentage,
    )
    preset = get_preset(model_args.preset)
    with training_args.main_process_first(desc="tokenizer"):
        if model_args.tokenizer_name is not None:
            tokenizer = AutoTokenizer.from_pretrained(model_args.tokenizer_name)
        else:
            train_texts = raw["train"][text_column(raw["train"])]
            tokenizer = train_or_load_tokenizer(train_texts, model_args.vocab_size or preset.vocab_size)

    config = build_gpt2_config(
        model_args.preset,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        overrides=parse_config_overrides(model_args.config_overrides),
    )
    block_size = data_args.block_size or config.n_positions
    if block_size > config.n_positions:
        raise ValueError(f"--block_size {block_size} exceeds the model's context n_positions={config.n_positions}")
    with training_args.main_process_first(desc="tokenizing and packing"):
        blocks = pack_into_blocks(raw, tokenizer, block_size, num_proc=data_args.preprocessing_num_workers)
    eval_dataset = blocks["validation"]
    if data_args.max_eval_samples is not None and data_args.max_eval_samples >= 0:
        eval_dataset = eval_dataset.select(range(min(data_args.max_eval_samples, len(eval_dataset))))

    model = GPT2LMHeadModel(config)
    apply_init(model, model_args.init_scheme, **init_arguments(model_args))
    logger.info(
        "GPT-2 %s: %d layers, width %d, %d heads, context %d, %.1fM parameters; init %s; %d train and %d eval blocks of %d tokens",
        model_args.preset, config.n_layer, config.n_embd, config.n_head, config.n_positions,
        model.num_parameters() / 1e6, model_args.init_scheme, len(blocks["train"]), len(eval_dataset), block_size,
    )  # fmt: skip

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=blocks["train"],
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=default_data_collator,
        callbacks=[
            VarianceCallback(
                every_n_steps=tracking_args.variance_every_n_steps,
                per_head=tracking_args.variance_per_head,
                histogram_steps=_int_list(tracking_args.histogram_steps),
                histogram_layers=_int_list(tracking_args.histogram_layers),
            )
        ],
    )
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    train_metrics = dict(train_result.metrics)
    trainer.log_metrics("train", train_metrics)
    trainer.save_metrics("train", train_metrics)

    eval_metrics = trainer.evaluate()
    eval_metrics["perplexity"] = perplexity(eval_metrics["eval_loss"])
    trainer.log_metrics("eval", eval_metrics)
    trainer.save_metrics("eval", eval_metrics)

    if trainer.is_world_process_zero():
        summary = run_summary(trainer, block_size, eval_metrics, time.perf_counter() - started)
        Path(training_args.output_dir, "run_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        print_summary(summary)
        if tracking_args.variance_report:
            write_variance_report(training_args.output_dir)
    finish_wandb()


def parse_arguments(argv: list[str]) -> tuple[ModelArguments, DataArguments, TrackingArguments, TrainingArguments]:
    """Parse flags (or one JSON file) with the preset's training defaults under the user's flags."""
    parser = HfArgumentParser((ModelArguments, DataArguments, TrackingArguments, TrainingArguments))
    if len(argv) == 1 and argv[0].endswith(".json"):
        return parser.parse_json_file(json_file=os.path.abspath(argv[0]))

    preset_name = _flag_value(argv, "--preset") or ModelArguments.preset
    preset = get_preset(preset_name)
    parser.set_defaults(
        output_dir=f"runs/gpt2-{preset_name}",
        report_to=default_reporters(),
        use_cpu=not _has_accelerator(),
        **preset.training,
    )
    return parser.parse_args_into_dataclasses(args=argv)


def _flag_value(argv: list[str], flag: str) -> str | None:
    for index, argument in enumerate(argv):
        if argument == flag and index + 1 < len(argv):
            return argv[index + 1]
        if argument.startswith(flag + "="):
            return argument.split("=", 1)[1]
    return None


def _has_accelerator() -> bool:
    return torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available()) or torch.backends.mps.is_available()


def default_reporters() -> list[str]:
    """TensorBoard, plus W&B when it is installed."""
    reporters = ["tensorboard"]
    try:
        import wandb  # noqa: F401
    except ImportError:
        return reporters
    return reporters + ["wandb"]


def _int_list(text: str | None) -> list[int] | None:
    """'0,50,-1' -> [0, 50, -1]; None or '' -> None."""
    if not text:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ValueError(f"expected comma-separated integers such as '0,50,200', got {text!r}") from None


def init_arguments(model_args: ModelArguments) -> dict:
    arguments = parse_init_args(model_args.init_args) if model_args.init_args else {}
    if model_args.init_std is not None:
        arguments["std"] = model_args.init_std
    return arguments


def configure_logging(training_args: TrainingArguments) -> None:
    level = logging.INFO if training_args.should_log else logging.WARNING
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S", level=level, stream=sys.stdout)
    transformers.utils.logging.set_verbosity_warning()


def configure_wandb(training_args: TrainingArguments) -> None:
    """Run W&B offline when no credentials exist, so it never prompts; keep its files in output_dir."""
    if "wandb" not in training_args.report_to:
        return
    if not os.environ.get("WANDB_MODE") and not _has_wandb_credentials():
        os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_DIR", os.path.abspath(training_args.output_dir))
    os.environ.setdefault("WANDB_PROJECT", "hf-initvar")
    Path(os.environ["WANDB_DIR"]).mkdir(parents=True, exist_ok=True)


def _has_wandb_credentials() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    netrc = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    return netrc.is_file() and "api.wandb.ai" in netrc.read_text(errors="ignore")


def finish_wandb() -> None:
    """Close the W&B run and print the command that uploads an offline run."""
    try:
        import wandb
    except ImportError:
        return
    if wandb.run is None:
        return
    run_folder = Path(wandb.run.dir).parent
    offline = wandb.run.settings.mode == "offline"
    wandb.finish()
    if offline:
        print(f"W&B ran offline; upload this run with:\n  wandb sync {run_folder}")


def perplexity(loss: float) -> float:
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def run_summary(trainer: Trainer, block_size: int, eval_metrics: dict, wall_seconds: float) -> dict:
    args = trainer.args
    state = trainer.state
    train_losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    tokens_per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps * args.world_size * block_size
    return {
        "wall_seconds": round(wall_seconds, 1),
        "world_size": args.world_size,
        "steps": state.global_step,
        "tokens_seen": state.global_step * tokens_per_step,
        "final_train_loss": train_losses[-1] if train_losses else None,
        "final_train_perplexity": perplexity(train_losses[-1]) if train_losses else None,
        "eval_loss": eval_metrics["eval_loss"],
        "eval_perplexity": eval_metrics["perplexity"],
        "history": str(Path(args.output_dir, "variance", "history.csv")),
        "figures": [str(Path(args.output_dir, "variance", name)) for name in ("variance_heatmap.png", "variance_curves.png")],
    }


def write_variance_report(output_dir: str) -> None:
    """Write `<output_dir>/report/` and, when a W&B run is active, log its figures and table there."""
    from hf_initvar.reporting.report import log_report_to_wandb, write_report
    from hf_initvar.tracking.history import find_history_dir, read_logged_steps

    logged = read_logged_steps(find_history_dir(output_dir))
    if len(logged) < 3:
        print(f"No variance report: the history has {len(logged)} logged steps and the analysis needs at least 3.")
        return
    report = write_report(output_dir)
    print("\nDepth dependence of the Q/K/V variance")
    for verdict in report.analysis.verdicts():
        print(f"  {verdict}")
    print(f"Report: {report.markdown}")
    if log_report_to_wandb(report):
        print("Logged the report's figures and equilibration table to W&B.")


def print_summary(summary: dict) -> None:
    print("\nRun summary")
    for key, value in summary.items():
        print(f"  {key}: {value}")


if __name__ == "__main__":
    main()
