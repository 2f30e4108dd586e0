import numpy as np
import pytest

from hf_initvar.cli import main
from hf_initvar.reporting.figures import variance_grid
from hf_initvar.tracking.history import HistoryWriter, load_history


def _write_history(directory, steps=(0, 5, 10), n_layer=3):
    writer = HistoryWriter(directory, {"model_type": "gpt2", "n_layer": n_layer, "n_head": 2, "init_scheme": "gpt2"})
    keys = [(layer, projection, -1) for layer in range(n_layer) for projection in "qkv"]
    for step in steps:
        variance = np.array([(1 + layer) * 1e-4 * (1 + step / 10) for layer, _, _ in keys])
        statistics = {"variance": variance, "std": np.sqrt(variance), "mean": np.zeros(len(keys)), "rms": np.sqrt(variance), "count": np.full(len(keys), 64.0)}
        writer.append(step, keys, statistics)
    writer.close()


def test_variance_grid_is_layer_by_step(tmp_path):
    _write_history(tmp_path)
    frame, _ = load_history(tmp_path)
    steps, layers, grid = variance_grid(frame, "k")
    assert steps.tolist() == [0, 5, 10]
    assert layers.tolist() == [0, 1, 2]
    assert grid[2, 1] == pytest.approx(3e-4 * 1.5)


def test_plot_command_draws_both_figures(tmp_path, capsys):
    _write_history(tmp_path / "run" / "variance")
    assert main(["plot", str(tmp_path / "run"), "--out", str(tmp_path / "figures")]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(tmp_path / "figures" / "variance_heatmap.png"), str(tmp_path / "figures" / "variance_curves.png")]
    for path in printed:
        with open(path, "rb") as file:
            assert file.read(8) == b"\x89PNG\r\n\x1a\n"


def test_plot_command_without_history_fails_clearly(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert f"hf-initvar plot: error: no variance history at {tmp_path}" in error
    assert "history.csv" in error
