"""`hf-initvar report` and `compare-runs` on a real tiny training run of the example script."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from hf_initvar.cli import main
from hf_initvar.tracking.histograms import load_histograms
from wandb_records import read_history

ROOT = Path(__file__).resolve().parents[1]
REPORT_FILES = {
    "report.md",
    "equilibration.csv",
    "variance_heatmap.png",
    "variance_curves.png",
    "equilibration.png",
    "head_bands.png",
    "weight_histograms.png",
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """Six steps of the tiny preset, per-head rows, histograms at steps 0, 3 and 6, W&B offline."""
    output_dir = tmp_path_factory.mktemp("tiny_run")
    command = [
        sys.executable, str(ROOT / "examples" / "pretrain_gpt2.py"), "--preset", "tiny", "--max_steps", "6",
        "--output_dir", str(output_dir), "--report_to", "wandb", "--variance_every_n_steps", "2",
        "--variance_per_head", "--histogram_steps", "0,3,6", "--histogram_layers", "0,-1",
    ]  # fmt: skip
    environment = {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return output_dir


def test_example_writes_report_at_end_of_training(tiny_run):
    written = {path.name for path in (tiny_run / "report").iterdir()}

    assert written == REPORT_FILES


def test_histograms_recorded_only_at_chosen_steps(tiny_run):
    frame = load_histograms(tiny_run / "variance")

    assert sorted(frame["step"].unique()) == [0, 3, 6]
    assert sorted(frame["layer"].unique()) == [0, 1]  # the tiny preset has 2 layers; -1 is layer 1
    totals = frame.groupby(["step", "layer", "projection"])["count"].sum()
    # tiny preset: width 32, so each of Q, K and V has 32 x 32 weights.
    assert (totals == 32 * 32).all()


def test_report_command_writes_every_file(tiny_run, tmp_path, capsys):
    out = tmp_path / "report"
    code = main(["report", str(tiny_run), "--out", str(out)])

    assert code == 0
    assert {path.name for path in out.iterdir()} == REPORT_FILES
    printed = capsys.readouterr().out
    assert "Q, K and V pooled" in printed
    table = pd.read_csv(out / "equilibration.csv")
    assert len(table[table["head"] == -1]) == 2 * 3  # 2 layers x 3 projections
    assert len(table[table["head"] >= 0]) == 2 * 3 * 2  # and 2 heads each
    markdown = (out / "report.md").read_text()
    for name in REPORT_FILES - {"report.md", "equilibration.csv"}:
        assert f"]({name})" in markdown, name
    assert "init scheme: `gpt2`" in markdown
    assert "| 0 | q | 4.00e-04 |" in markdown  # gpt2's Q/K/V target, 0.02²


def test_compare_runs_writes_overlay(tiny_run, tmp_path):
    out = tmp_path / "compare"
    code = main(["compare-runs", str(tiny_run), str(tiny_run / "variance"), "--out", str(out), "--labels", "a,b"])

    assert code == 0
    assert {path.name for path in out.iterdir()} == {"compare.md", "compare_curves.png", "compare_equilibration.png", "compare.csv"}
    table = pd.read_csv(out / "compare.csv")
    assert sorted(table["run"].unique()) == ["a", "b"]
    assert "| a | 6 |" in (out / "compare.md").read_text()


def test_report_reaches_wandb(tiny_run):
    run_files = list((tiny_run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(run_files) == 1
    rows = read_history(run_files[0])
    logged = {key: value for row in rows for key, value in row.items() if key.startswith("report/")}

    # The record flattens each logged object into keys such as `report/figures/heatmap/_type`.
    for name in ("heatmap", "curves", "equilibration", "head_bands", "histograms"):
        assert logged[f"report/figures/{name}/_type"] == "image-file", name
    assert logged["report/equilibration_table/_type"] == "table-file"
    assert logged["report/equilibration_table/nrows"] == 2 * 3


def test_report_of_missing_run_fails_plainly(tmp_path, capsys):
    code = main(["report", str(tmp_path / "nothing")])

    assert code == 2
    assert "no variance history at" in capsys.readouterr().err


def test_compare_runs_needs_two_runs(tiny_run, tmp_path, capsys):
    code = main(["compare-runs", str(tiny_run), "--out", str(tmp_path)])

    assert code == 2
    assert "at least two runs" in capsys.readouterr().err
