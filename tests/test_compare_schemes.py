import json
import math

import numpy as np
import pytest

from hf_initvar.cli import main as cli_main
from hf_initvar.experiments.compare import (
    CompareConfig,
    format_summary_table,
    run_compare,
    steps_to_threshold,
    trailing_mean,
)
from hf_initvar.reporting.mlp_plots import draw_compare_figures


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_compare(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("compare")
    config = CompareConfig(
        schemes=["kaiming_normal", "xavier_normal"], seeds=[0, 1, 2], hidden_size=32, num_hidden_layers=6,
        learning_rate=0.05, epochs=4, loss_threshold=1.5,
    )
    return run_compare(config, output_dir, progress=False), output_dir


def test_kaiming_keeps_signal_and_xavier_shrinks_it(tiny_compare):
    summary, _ = tiny_compare
    kaiming = summary["schemes"]["kaiming_normal"]
    xavier = summary["schemes"]["xavier_normal"]

    # Hidden layers 32 -> 32: Kaiming std sqrt(2/32), Xavier sqrt(2/64); 3 seeds x 1024 draws each.
    tolerance = 5 * 0.25 / math.sqrt(2 * 3 * 1024)
    assert kaiming["hidden_weight_std"] == pytest.approx(math.sqrt(2 / 32), abs=tolerance)
    assert xavier["hidden_weight_std"] == pytest.approx(math.sqrt(1 / 32), abs=tolerance)
    # Over 7 weight layers a variance-1/n init shrinks ReLU signals by about 2**-3.5 relative to Kaiming.
    ratio = xavier["output_rms_ratio_at_init"] / kaiming["output_rms_ratio_at_init"]
    assert 2**-3.5 / 3 < ratio < 2**-3.5 * 3


def test_kaiming_reaches_threshold_first(tiny_compare):
    summary, _ = tiny_compare
    kaiming = summary["schemes"]["kaiming_normal"]["steps_to_threshold"]
    xavier = summary["schemes"]["xavier_normal"]["steps_to_threshold"]

    assert kaiming["reached"] == 3
    assert xavier["reached"] == 0 or xavier["mean"] > kaiming["mean"]


def test_curve_interval_brackets_mean(tiny_compare):
    summary, _ = tiny_compare

    for scheme in summary["schemes"].values():
        mean = np.asarray(scheme["curve_mean"])
        assert np.all(np.asarray(scheme["curve_ci_low"]) <= mean + 1e-12)
        assert np.all(np.asarray(scheme["curve_ci_high"]) >= mean - 1e-12)
        assert len(mean) == summary["steps_per_epoch"] * 4


def test_outputs_table_json_and_plot(tiny_compare):
    summary, output_dir = tiny_compare

    assert json.loads((output_dir / "compare.json").read_text())["config"]["seeds"] == [0, 1, 2]
    assert (output_dir / "curves.csv").read_text().count("\n") == 1 + 2 * 3 * len(summary["schemes"]["kaiming_normal"]["curve_mean"])
    assert "| kaiming_normal |" in (output_dir / "summary.md").read_text()
    assert format_summary_table(summary).count("\n") == 3
    (path,) = draw_compare_figures(output_dir)
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_trailing_mean_over_window():
    losses = np.array([[4.0], [2.0], [0.0], [6.0]])

    np.testing.assert_allclose(trailing_mean(losses, 2)[:, 0], [4.0, 3.0, 1.0, 3.0])


def test_trailing_mean_stays_nan_after_divergence():
    losses = np.array([[1.0], [np.nan], [1.0], [1.0]])

    assert np.isnan(trailing_mean(losses, 2)[1:, 0]).all()


def test_steps_to_threshold_is_first_crossing():
    assert steps_to_threshold(np.array([3.0, 2.0, 0.5, 0.1]), 1.0) == 3
    assert steps_to_threshold(np.array([3.0, 2.0]), 1.0) is None


def test_single_seed_is_rejected():
    with pytest.raises(ValueError, match="at least 2 seeds"):
        CompareConfig(seeds=[0])


def test_repeated_seed_is_rejected():
    with pytest.raises(ValueError, match=r"seeds must be distinct, got \[0, 0\]"):
        CompareConfig(seeds=[0, 0])


def test_linear_model_is_rejected():
    with pytest.raises(ValueError, match="num_hidden_layers must be at least 1.*got 0"):
        CompareConfig(num_hidden_layers=0)


def test_cli_compare_reports_unknown_scheme(tmp_path, capsys):
    code = cli_main(["compare", "--output_dir", str(tmp_path), "--schemes", "kaiming_normall"])

    assert code == 2
    assert "did you mean 'kaiming_normal'" in capsys.readouterr().err


@pytest.mark.slow
def test_compare_example_runs_end_to_end(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "examples" / "kaiming_vs_xavier.py"
    completed = subprocess.run(
        [sys.executable, str(script), "--output_dir", str(tmp_path), "--hidden_size", "16", "--num_hidden_layers", "3",
         "--seeds", "0", "1", "--epochs", "1"],
        capture_output=True, text=True, timeout=600,
    )

    assert completed.returncode == 0, completed.stderr[-2000:]
    assert "| kaiming_normal |" in completed.stdout
    assert (tmp_path / "compare_loss_curves.png").exists()


def test_wandb_offline_run_logs_scheme_table(tiny_compare, monkeypatch):
    import time
    from pathlib import Path

    from wandb_records import read_history

    from hf_initvar.reporting.mlp_plots import log_compare_to_wandb

    summary, output_dir = tiny_compare
    draw_compare_figures(output_dir)
    monkeypatch.setenv("WANDB_MODE", "offline")

    sync = log_compare_to_wandb(output_dir, project="hf-initvar-test")

    assert sync.startswith("wandb sync ")
    run_folder = Path(sync.split(" ", 2)[2])
    # The W&B service can flush the run file after finish() returns, so it is read until complete.
    deadline = time.monotonic() + 60
    while True:
        [run_file] = run_folder.glob("*.wandb")
        logged = {key: value for row in read_history(run_file) for key, value in row.items()}
        if "compare/compare_loss_curves/_type" in logged or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    # Nested values are logged under flattened keys such as `compare/schemes/_type`.
    assert logged["compare/schemes/_type"] == "table-file"
    assert logged["compare/compare_loss_curves/_type"] == "image-file"
    table = json.loads((run_folder / "files" / logged["compare/schemes/path"]).read_text())
    assert table["columns"][:3] == ["scheme", "hidden_weight_std", "steps_to_threshold"]
    by_scheme = {row[0]: row for row in table["data"]}
    assert set(by_scheme) == {"kaiming_normal", "xavier_normal"}
    for name, scheme in summary["schemes"].items():
        assert by_scheme[name][2] == scheme["steps_to_threshold"]["mean"]
        assert by_scheme[name][6] == pytest.approx(scheme["final_test_accuracy"]["mean"])
