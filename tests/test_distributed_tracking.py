"""Two-process runs (gloo, CPU): statistics from shards equal the single-process statistics."""

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_initvar.tracking.history import load_history
from hf_initvar.tracking.layouts import detect_layout
from hf_initvar.tracking.stats import compute_moments, moments_to_statistics, row_keys

sys.path.insert(0, str(Path(__file__).parent))
from distributed_worker import FAMILIES, STEPS, build  # noqa: E402

WORKER = Path(__file__).parent / "distributed_worker.py"
RELATIVE_TOLERANCE = 1e-6


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _launch(mode: str, output_dir: Path) -> None:
    environment = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[1]), OMP_NUM_THREADS="1", DS_ACCELERATOR="cpu")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER), mode, str(output_dir),
    ]  # fmt: skip
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]


def _single_process_statistics(family: str, weights_path: Path):
    model = build(family)
    model.load_state_dict(torch.load(weights_path), strict=False)
    layout = detect_layout(model)
    keys = row_keys(layout, per_head=True)
    out = torch.zeros((len(keys), 3), dtype=torch.float64)
    moments = compute_moments(layout.views(), True, out).numpy()
    return keys, moments[:, 0], moments_to_statistics(moments)


def _single_process_update_statistics(family: str, directory: Path, step: int):
    """Statistics of the weight change from step - 1 to step, from the gathered weights."""
    before, after = (torch.load(directory / f"weights_step_{s}.pt") for s in (step - 1, step))
    model = build(family)
    model.load_state_dict({name: after[name] - before[name] for name in after}, strict=False)
    layout = detect_layout(model)
    keys = row_keys(layout, per_head=True)
    moments = compute_moments(
        [type(view)(view.layer, view.projection, view.weight.detach().double()) for view in layout.views()], True,
        torch.zeros((len(keys), 3), dtype=torch.float64),
    ).numpy()
    return keys, moments[:, 0], moments_to_statistics(moments)


def _check_updates_and_gradients(directory: Path, family: str) -> float:
    """Compare the sharded update rows with one-process ones; check gradient rows are complete."""
    updates, _ = load_history(directory / family, quantity="update")
    gradients, _ = load_history(directory / family, quantity="gradient")
    assert sorted(updates["step"].unique()) == list(range(1, STEPS + 1))
    assert sorted(gradients["step"].unique()) == list(range(1, STEPS + 1))
    assert gradients["variance"].gt(0).all()
    largest = 0.0
    for step in range(1, STEPS + 1):
        keys, counts, expected = _single_process_update_statistics(family, directory / family, step)
        rows = updates[updates["step"] == step].set_index(["layer", "projection", "head"]).loc[keys]
        np.testing.assert_array_equal(rows["count"].to_numpy(), counts)
        np.testing.assert_array_equal(gradients[gradients["step"] == step].set_index(["layer", "projection", "head"]).loc[keys, "count"].to_numpy(), counts)
        np.testing.assert_allclose(rows["variance"].to_numpy(), expected["variance"], rtol=RELATIVE_TOLERANCE)
        largest = max(largest, float(np.max(np.abs(rows["variance"].to_numpy() / expected["variance"] - 1))))
    return largest


def _largest_relative_difference(directory: Path, family: str, steps: list[int]) -> float:
    """Compare every logged row with the one-process statistics; return the largest variance difference."""
    frame, _ = load_history(directory / family)
    assert sorted(frame["step"].unique()) == list(range(STEPS + 1))
    largest = 0.0
    for step in steps:
        keys, counts, expected = _single_process_statistics(family, directory / family / f"weights_step_{step}.pt")
        rows = frame[frame["step"] == step].set_index(["layer", "projection", "head"]).loc[keys]
        assert len(rows) == len(keys)
        np.testing.assert_array_equal(rows["count"].to_numpy(), counts)
        for name in ("variance", "std", "rms"):
            np.testing.assert_allclose(rows[name].to_numpy(), expected[name], rtol=RELATIVE_TOLERANCE, atol=0)
        # Means are near zero, so they are compared against the spread instead of themselves.
        np.testing.assert_allclose(rows["mean"].to_numpy(), expected["mean"], rtol=0, atol=RELATIVE_TOLERANCE * expected["std"].min())
        largest = max(largest, float(np.max(np.abs(rows["variance"].to_numpy() / expected["variance"] - 1))))
    return largest


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fsdp2", "fsdp1", "fsdp1_orig"])
def test_fsdp_shards_match_single_process(mode, tmp_path, record_property):
    _launch(mode, tmp_path)
    expected_sharding = mode.removesuffix("_orig")
    for family in FAMILIES:
        detected = [(tmp_path / family / f"sharding_rank{rank}.txt").read_text() for rank in (0, 1)]
        assert detected == [expected_sharding, expected_sharding]
        difference = _largest_relative_difference(tmp_path, family, list(range(STEPS + 1)))
        update_difference = _check_updates_and_gradients(tmp_path, family)
        record_property(f"{mode}_{family}_max_relative_variance_difference", difference)
        print(f"{mode} {family}: largest relative variance difference {difference:.2e}, of updates {update_difference:.2e}")


@pytest.mark.slow
def test_ddp_trainer_matches_single_process(tmp_path):
    _launch("ddp", tmp_path)
    assert [(tmp_path / "gpt2" / f"sharding_rank{rank}.txt").read_text() for rank in (0, 1)] == ["none", "none"]
    difference = _largest_relative_difference(tmp_path, "gpt2", [STEPS])
    initial = _largest_relative_difference_at_init(tmp_path)
    print(f"ddp gpt2: largest relative variance difference {max(difference, initial):.2e}")


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed (pip install 'hf-initvar[deepspeed]')")
def test_zero3_trainer_matches_single_process(tmp_path):
    _launch("zero3", tmp_path)
    assert [(tmp_path / "gpt2" / f"sharding_rank{rank}.txt").read_text() for rank in (0, 1)] == ["zero3", "zero3"]
    difference = _largest_relative_difference(tmp_path, "gpt2", [STEPS])
    initial = _largest_relative_difference_at_init(tmp_path)
    print(f"zero3 gpt2: largest relative variance difference {max(difference, initial):.2e}")


def _largest_relative_difference_at_init(directory: Path) -> float:
    """Step 0 of a Trainer run against the same seed-built model in one process."""
    frame, _ = load_history(directory / "gpt2")
    model = build("gpt2")
    torch.save(model.state_dict(), directory / "gpt2" / "weights_step_0.pt")
    return _largest_relative_difference(directory, "gpt2", [0])
