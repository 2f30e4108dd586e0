"""End-to-end runs of examples/pretrain_gpt2.py, as a user launches it."""

import glob
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hf_initvar.tracking.history import load_history
from wandb_records import read_history

SCRIPT = Path(__file__).resolve().parents[1] / "examples" / "pretrain_gpt2.py"
ACCELERATE = Path(sys.executable).parent / "accelerate"


def _run(command, tmp_path, **env):
    environment = {**os.environ, "HF_INITVAR_CACHE": str(tmp_path / "cache"), "WANDB_MODE": "offline", **env}
    environment.pop("WANDB_DIR", None)
    return subprocess.run(command, capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=600)


def _example(tmp_path, *flags, launcher=(sys.executable,), **env):
    return _run([*launcher, str(SCRIPT), "--preset", "tiny", "--corpus", "python-docs", *flags], tmp_path, **env)


@pytest.mark.slow
def test_tiny_run_writes_history_reporters_and_summary(tmp_path):
    output = tmp_path / "out"
    result = _example(tmp_path, "--output_dir", str(output), "--max_steps", "6", "--variance_every_n_steps", "2")
    assert result.returncode == 0, result.stderr[-3000:]

    frame, meta = load_history(output)
    assert meta["n_layer"] == 2
    assert meta["init_scheme"] == "gpt2"
    expected_keys = {(step, layer, projection) for step in (0, 2, 4, 6) for layer in range(2) for projection in "qkv"}
    assert set(zip(frame["step"], frame["layer"], frame["projection"])) == expected_keys
    assert len(frame) == len(expected_keys)
    assert np.isfinite(frame[["variance", "std", "mean", "rms"]].to_numpy()).all()
    for name in ("variance_heatmap.png", "variance_curves.png"):
        assert (output / "variance" / name).stat().st_size > 10_000

    summary = json.loads((output / "run_summary.json").read_text())
    assert summary["steps"] == 6
    assert summary["world_size"] == 1
    assert summary["tokens_seen"] == 6 * 4 * 32
    assert summary["eval_perplexity"] == pytest.approx(math.exp(summary["eval_loss"]), rel=1e-9)
    assert (output / "tokenizer.json").is_file()
    assert json.loads((output / "config.json").read_text())["n_layer"] == 2

    [events_dir] = [path for path in (output / "runs").iterdir()]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(events_dir))
    events.Reload()
    assert [event.step for event in events.Scalars("train/qkv/variance/layer_01/v")] == [0, 2, 4, 6]

    [run_file] = glob.glob(str(output / "wandb" / "offline-run-*" / "*.wandb"))
    rows = read_history(run_file)
    assert [row["train/global_step"] for row in rows if "train/qkv/std/layer_00/q" in row] == [0, 2, 4, 6]
    assert f"wandb sync {Path(run_file).parent}" in result.stdout


@pytest.mark.slow
def test_rerun_reuses_the_cached_tokenizer(tmp_path):
    results = [
        _example(tmp_path, "--output_dir", str(tmp_path / f"run{index}"), "--max_steps", "1", "--report_to", "none")
        for index in range(2)
    ]
    for result in results:
        assert result.returncode == 0, result.stderr[-3000:]
    assert "Training a byte-level BPE tokenizer" in results[0].stdout
    assert "Loading the cached tokenizer" in results[1].stdout
    assert "Training a byte-level BPE tokenizer" not in results[1].stdout
    assert len(list((tmp_path / "cache" / "tokenizers").iterdir())) == 1


@pytest.mark.slow
def test_two_processes_run_world_size_two_with_one_history(tmp_path):
    output = tmp_path / "ddp"
    launcher = (str(ACCELERATE), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no")
    result = _example(tmp_path, "--output_dir", str(output), "--max_steps", "3", "--report_to", "tensorboard", launcher=launcher)
    assert result.returncode == 0, result.stderr[-3000:]

    summary = json.loads((output / "run_summary.json").read_text())
    assert summary["world_size"] == 2
    assert summary["tokens_seen"] == 3 * 4 * 2 * 32
    frame, _ = load_history(output)
    assert not frame.duplicated(["step", "layer", "projection", "head"]).any()
    assert frame.groupby("step").size().to_dict() == {0: 6, 1: 6, 2: 6, 3: 6}
    assert result.stdout.count("Run summary") == 1


@pytest.mark.slow
@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--preset", "quik"), "unknown preset 'quik'. Did you mean 'quick'?"),
        (("--block_size", "64"), "--block_size 64 exceeds the model's context n_positions=32"),
        (("--config_overrides", "n_layers=3"), "'n_layers' is not a GPT2Config field. Did you mean 'n_layer'?"),
        (("--init_scheme", "kaimng_normal"), "kaiming_normal"),
    ],
)
def test_bad_flags_stop_with_a_clear_error(tmp_path, flags, message):
    result = _example(tmp_path, "--output_dir", str(tmp_path / "bad"), "--report_to", "none", *flags)
    assert result.returncode != 0
    assert message in result.stderr
    assert not (tmp_path / "bad" / "variance" / "history.csv").exists()


@pytest.mark.slow
def test_corpus_shorter_than_a_block_stops_before_training(tmp_path):
    short = tmp_path / "short.txt"
    short.write_text("just a few words\n")
    result = _run([sys.executable, str(SCRIPT), "--preset", "tiny", "--train_file", str(short), "--validation_file", str(short),
                   "--tokenizer_name", str(_trained_tokenizer(tmp_path)), "--output_dir", str(tmp_path / "o"), "--report_to", "none"], tmp_path)  # fmt: skip
    assert result.returncode != 0
    assert "the train split has" in result.stderr
    assert "tokens, fewer than one block of 32" in result.stderr


def _trained_tokenizer(tmp_path):
    from hf_initvar.experiments.lm_data import builtin_corpus, train_or_load_tokenizer

    tokenizer = train_or_load_tokenizer([d.text for d in builtin_corpus("python-docs")[:5]], 300, cache_root=tmp_path / "cache")
    path = tmp_path / "tokenizer"
    tokenizer.save_pretrained(path)
    return path
