"""Fixed-bin weight histograms: exact counts, shared edges across steps, the file format, resumes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from hf_initvar.tracking.histograms import HISTOGRAMS_FILENAME, HistogramRecorder, load_histograms
from hf_initvar.tracking.layouts import detect_layout


def record(recorder: HistogramRecorder, model, step: int) -> None:
    recorder.append(recorder.compute(detect_layout(model).views(), step))


def test_counts_match_numpy_histogram(tiny_gpt2, tmp_path):
    recorder = HistogramRecorder(layers=[0, -1], steps=[0], bins=20)
    recorder.open(tmp_path, n_layer=3)
    record(recorder, tiny_gpt2, 0)
    frame = load_histograms(tmp_path)

    assert sorted(frame["layer"].unique()) == [0, 2]
    for view in detect_layout(tiny_gpt2).views():
        if view.layer not in (0, 2):
            continue
        block = frame[(frame["layer"] == view.layer) & (frame["projection"] == view.projection)]
        weights = view.weight.detach().reshape(-1).double().numpy()
        edges = block["lower"].to_numpy()[1:]
        inside, _ = np.histogram(weights, bins=edges)
        # numpy closes the last bin on the right; the file counts a weight equal to the last edge as overflow.
        inside[-1] -= int((weights == edges[-1]).sum())
        assert block["count"].sum() == weights.size
        assert block["count"].to_numpy()[1:-1].tolist() == inside.tolist()
        assert block["count"].iloc[0] == int((weights < edges[0]).sum())


def test_edges_span_six_stds_of_first_snapshot(tiny_gpt2, tmp_path):
    recorder = HistogramRecorder(layers=[1], steps=[0], bins=10, range_in_std=6.0)
    recorder.open(tmp_path, n_layer=3)
    record(recorder, tiny_gpt2, 0)
    frame = load_histograms(tmp_path)

    for view in detect_layout(tiny_gpt2).views():
        if view.layer != 1:
            continue
        block = frame[frame["projection"] == view.projection]
        std = view.weight.detach().double().std().item()
        assert block["lower"].iloc[1] == pytest.approx(-6 * std)
        assert block["upper"].iloc[-2] == pytest.approx(6 * std)
        assert len(block) == 12  # 10 bins plus the two open-ended ones


def test_later_snapshots_keep_first_edges(tiny_gpt2, tmp_path):
    recorder = HistogramRecorder(layers=[0], steps=[0, 5], bins=16)
    recorder.open(tmp_path, n_layer=3)
    record(recorder, tiny_gpt2, 0)
    with torch.no_grad():
        for view in detect_layout(tiny_gpt2).views():
            view.weight.mul_(10.0)  # far outside the first range
    record(recorder, tiny_gpt2, 5)
    frame = load_histograms(tmp_path)

    first, later = frame[frame["step"] == 0], frame[frame["step"] == 5]
    assert first["lower"].tolist() == later["lower"].tolist()
    assert first["upper"].tolist() == later["upper"].tolist()
    open_bins = later.groupby("projection").apply(lambda block: block["count"].iloc[[0, -1]].sum() / block["count"].sum(), include_groups=False)
    # ×10 puts the default ±10σ range at ±1σ of the new weights, and 31.7 % of a normal lies outside.
    # With 576 weights a projection the share is off by about √(0.317·0.683/576) ≈ 0.019; allow 4 of those.
    assert (open_bins > 0.317 - 0.08).all()
    assert (open_bins < 0.317 + 0.08).all()


def test_resume_reuses_edges_and_skips_recorded_steps(tiny_gpt2, tmp_path):
    first = HistogramRecorder(layers=[0], steps=[0, 3], bins=8)
    first.open(tmp_path, n_layer=3)
    record(first, tiny_gpt2, 0)
    edges = load_histograms(tmp_path)["lower"].iloc[:9].tolist()

    resumed = HistogramRecorder(layers=[0], steps=[0, 3], bins=8, range_in_std=1.0)
    resumed.open(tmp_path, n_layer=3)
    assert not resumed.wants(0)
    assert resumed.wants(3)
    record(resumed, tiny_gpt2, 3)
    frame = load_histograms(tmp_path)
    assert frame[frame["step"] == 3]["lower"].iloc[:9].tolist() == edges


def test_file_columns_are_documented(tiny_gpt2, tmp_path):
    recorder = HistogramRecorder(layers=[0], steps=[0], bins=4)
    recorder.open(tmp_path, n_layer=3)
    record(recorder, tiny_gpt2, 0)
    header = (tmp_path / HISTOGRAMS_FILENAME).read_text().splitlines()[0]

    assert header == "step,layer,projection,lower,upper,count"
    frame = pd.read_csv(tmp_path / HISTOGRAMS_FILENAME)
    assert np.isneginf(frame["lower"].iloc[0])
    assert np.isposinf(frame["upper"].iloc[5])


def test_layer_outside_model_raises(tmp_path):
    recorder = HistogramRecorder(layers=[3], steps=[0])

    with pytest.raises(ValueError, match=r"outside the model's 3 layers \(allowed: 0..2"):
        recorder.open(tmp_path, n_layer=3)


@pytest.mark.parametrize(("arguments", "message"), [({"layers": [], "steps": [0]}, "at least one layer"), ({"layers": [0], "steps": [-1]}, "non-negative"), ({"layers": [0], "steps": [0], "bins": 1}, "bins")])
def test_invalid_recorder_arguments_raise(arguments, message):
    with pytest.raises(ValueError, match=message):
        HistogramRecorder(**arguments)


def test_missing_histogram_file_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="histogram_steps"):
        load_histograms(tmp_path)
