import csv
import json
import math

import numpy as np
import pytest

from hf_initvar.cli import main as cli_main
from hf_initvar.experiments.sweep import (
    SweepConfig,
    classify_outcome,
    format_band_table,
    load_sweep_results,
    longest_run,
    mean_confidence_interval,
    run_sweep,
    t95_quantile,
)
from hf_initvar.experiments.theory import forward_stable_band
from hf_initvar.reporting.mlp_plots import draw_sweep_figures, log_sweep_to_wandb

TINY = dict(
    hidden_size=32, num_hidden_layers=3, std_min=1e-3, std_max=10.0, num_stds=9, seeds=[0, 1], epochs=6,
    max_samples=600, init_batch_size=128, adam_learning_rate=1e-2,
)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("sweep")
    summary = run_sweep(SweepConfig(**TINY), output_dir, progress=False)
    return summary, output_dir


def _outcomes(summary, optimizer, seed):
    return [r["outcome"] for r in summary["runs"] if r["optimizer"] == optimizer and r["seed"] == seed]


def test_regimes_run_from_vanishing_to_exploding(tiny_sweep):
    summary, _ = tiny_sweep

    for optimizer in ("sgd", "adam"):
        for seed in (0, 1):
            outcomes = _outcomes(summary, optimizer, seed)
            assert outcomes[0] == "vanishing", (optimizer, seed, outcomes)
            assert outcomes[-1] in ("exploding", "diverged"), (optimizer, seed, outcomes)
            assert "stable" in outcomes, (optimizer, seed, outcomes)


def test_diverged_runs_never_report_a_finite_loss(tiny_sweep):
    summary, output_dir = tiny_sweep
    diverged = [r for r in summary["runs"] if r["outcome"] == "diverged"]

    assert diverged, "the sweep's top std (10) should make SGD diverge"
    for run in diverged:
        assert run["train_loss"] is None
        assert run["train_loss"] != 0.0
    rows = list(csv.DictReader((output_dir / "runs.csv").open()))
    for row in rows:
        if row["outcome"] == "diverged":
            assert row["train_loss"] == "nan"


def test_result_files_json_and_csv(tiny_sweep):
    summary, output_dir = tiny_sweep

    strict = json.loads((output_dir / "sweep.json").read_text(), parse_constant=lambda c: pytest.fail(f"found {c}"))
    rows = list(csv.DictReader((output_dir / "runs.csv").open()))

    assert len(strict["runs"]) == len(rows) == 9 * 2 * 2
    assert rows[0]["activation_variance_0"] != ""
    assert load_sweep_results(output_dir)["stds"] == summary["stds"]


def test_band_is_longest_stable_run_per_seed(tiny_sweep):
    summary, _ = tiny_sweep
    stds = np.asarray(summary["stds"])

    for optimizer in ("sgd", "adam"):
        for seed in (0, 1):
            stable = [o == "stable" for o in _outcomes(summary, optimizer, seed)]
            assert summary["bands"][optimizer]["per_seed"][str(seed)] == longest_run(stds, stable)


def test_theory_band_matches_formula(tiny_sweep):
    summary, _ = tiny_sweep

    assert summary["theory"]["band"] == list(forward_stable_band([64, 32, 32, 32, 10], 100.0))


def test_figures_are_written(tiny_sweep, tmp_path):
    _, output_dir = tiny_sweep

    paths = draw_sweep_figures(output_dir, out_dir=tmp_path)

    assert [p.name for p in paths] == ["sweep_loss_accuracy.png", "sweep_init_variance.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_wandb_offline_run_logs_table_and_plots(tiny_sweep, monkeypatch):
    _, output_dir = tiny_sweep
    draw_sweep_figures(output_dir)
    monkeypatch.setenv("WANDB_MODE", "offline")

    sync = log_sweep_to_wandb(output_dir, project="hf-initvar-test")

    assert sync is not None and sync.startswith("wandb sync ")
    run_folder = sync.split(" ", 2)[2]
    assert list(__import__("pathlib").Path(run_folder).glob("*.wandb"))


def test_band_table_lists_every_band(tiny_sweep):
    summary, _ = tiny_sweep

    table = format_band_table(summary)

    for label in ("trained with sgd", "trained with adam", "measured propagation", "theory propagation", "paper"):
        assert label in table


@pytest.mark.parametrize(
    ("losses", "train_loss", "ratio", "expected"),
    [
        ([2.3, float("nan")], 1.0, 1.0, "diverged"),
        ([2.3, 2.2], None, 1.0, "diverged"),
        ([2.3, 0.1], 0.1, 1e-6, "stable"),
        ([2.3, 2.3], 2.3, 1e-6, "vanishing"),
        ([2.3, 2.3], 2.3, 1e6, "exploding"),
        ([2.3, 2.3], 2.3, None, "exploding"),
    ],
)
def test_classify_outcome_rule(losses, train_loss, ratio, expected):
    outcome = classify_outcome(np.asarray(losses), train_loss, train_loss, ratio, math.log(10), 0.5)

    assert outcome == expected


def test_longest_run_picks_widest_stretch():
    stds = np.array([1, 2, 3, 4, 5, 6, 7], dtype=float)

    assert longest_run(stds, [True, False, True, True, True, False, True]) == [3.0, 5.0]
    assert longest_run(stds, [False] * 7) is None


def test_confidence_interval_uses_student_t():
    mean, low, high = mean_confidence_interval([1.0, 2.0, 3.0])

    assert mean == 2.0
    assert high - mean == pytest.approx(t95_quantile(2) * 1.0 / math.sqrt(3))
    assert t95_quantile(2) == pytest.approx(4.303)


def test_invalid_grid_is_rejected():
    with pytest.raises(ValueError, match="std_min < std_max"):
        SweepConfig(std_min=1.0, std_max=0.1)
    with pytest.raises(ValueError, match="Did you mean 'adam'"):
        SweepConfig(optimizers=["sgd", "adamw"])


def test_cli_sweep_prints_band_table(tmp_path, capsys):
    code = cli_main([
        "sweep", "--output_dir", str(tmp_path), "--no_progress", "--hidden_size", "16", "--num_hidden_layers", "2",
        "--num_stds", "4", "--std_min", "0.01", "--std_max", "1", "--seeds", "0", "1", "--optimizers", "adam",
        "--epochs", "1", "--max_samples", "300",
    ])

    assert code == 0
    printed = capsys.readouterr().out
    assert "theory propagation" in printed
    assert (tmp_path / "sweep_loss_accuracy.png").exists()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"seeds": [1, 1, 1]}, r"seeds must be distinct, got \[1, 1, 1\]"),
        ({"num_hidden_layers": -1}, "num_hidden_layers must be at least 1 for a ReLU network, got -1"),
        ({"init_batch_size": 0}, "init_batch_size must be at least 1, got 0"),
        ({"max_samples": 0}, "max_samples must be at least 1"),
    ],
    ids=["repeated_seeds", "negative_depth", "empty_init_batch", "no_samples"],
)
def test_sweep_config_rejects_invalid_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        SweepConfig(**overrides)


def test_accuracy_interval_clipped_to_unit_range():
    mean, low, high = mean_confidence_interval([0.6, 0.99, 0.95], limits=(0.0, 1.0))

    assert mean == pytest.approx(0.8466666666666667)
    assert high == 1.0
    unclipped_low = mean_confidence_interval([0.6, 0.99, 0.95])[1]
    assert low == pytest.approx(unclipped_low)


def test_cli_rejects_zero_threads(tmp_path, capsys):
    code = cli_main(["sweep", "--output_dir", str(tmp_path), "--num_threads", "0"])

    assert code == 2
    assert "hf-initvar sweep: error: --num_threads must be at least 1, got 0" in capsys.readouterr().err
    assert not tmp_path.joinpath("sweep.json").exists()


def test_cli_sweep_reports_invalid_optimizer(tmp_path, capsys):
    code = cli_main(["sweep", "--output_dir", str(tmp_path), "--optimizers", "sdg"])

    assert code == 2
    assert "Did you mean 'sgd'?" in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_example_runs_end_to_end(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "mlp_std_sweep.py"
    completed = subprocess.run(
        [sys.executable, str(script), "--output_dir", str(tmp_path), "--hidden_size", "16", "--num_hidden_layers", "2",
         "--num_stds", "5", "--seeds", "0", "1", "--epochs", "2", "--max_samples", "400", "--report_to", "wandb"],
        capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "WANDB_MODE": "offline"},
    )

    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "theory propagation" in completed.stdout
    assert "wandb sync" in completed.stdout
    assert (tmp_path / "sweep_init_variance.png").exists()


def test_tanh_sweep_has_no_relu_theory(tmp_path):
    config = SweepConfig(activation="tanh", hidden_size=16, num_hidden_layers=2, num_stds=3, seeds=[0],
                         optimizers=["sgd"], epochs=1, max_samples=200)

    summary = run_sweep(config, tmp_path, progress=False)
    table = format_band_table(summary)
    draw_sweep_figures(tmp_path)

    assert summary["theory"]["band"] is None
    assert summary["theory"]["predicted_activation_variance"] is None
    assert "derived for relu only, not tanh" in table
    assert (tmp_path / "sweep_init_variance.png").stat().st_size > 10_000
