"""Partition arithmetic: moments of flat or row-chunked shards merge to the whole-weight moments."""

import math

import numpy as np
import pytest
import torch
from test_layouts import FAMILIES

from hf_initvar.tracking.layouts import detect_layout
from hf_initvar.tracking.shards import LocalRange, _rectangles, merge_rows, plan_pieces, reduce_pieces
from hf_initvar.tracking.stats import compute_moments, moments_to_statistics, row_keys


def _zero3_ranges(layout, rank, world_size):
    """This rank's ZeRO-3 partition of every weight: equal flat partitions, the last one padded."""
    ranges = []
    for placement in layout.placements:
        weight = placement.weight().detach()
        partition_numel = math.ceil(weight.numel() / world_size)
        padded = torch.cat([weight.reshape(-1), torch.full((partition_numel * world_size - weight.numel(),), float("nan"))])
        partition = padded[rank * partition_numel : (rank + 1) * partition_numel].clone()  # the ds_tensor
        length = max(0, min(partition_numel, weight.numel() - rank * partition_numel))
        ranges.append(LocalRange(partition[:length], rank * partition_numel, tuple(weight.shape)) if length else None)
    return ranges


def _row_chunk_ranges(layout, rank, world_size):
    """This rank's FSDP2 shard of every weight: `torch.chunk` of the rows."""
    ranges = []
    for placement in layout.placements:
        weight = placement.weight().detach()
        chunk = math.ceil(weight.shape[0] / world_size)
        rows = weight[rank * chunk : (rank + 1) * chunk].clone()
        ranges.append(LocalRange(rows.reshape(-1), rank * chunk * weight.shape[1], tuple(weight.shape)) if rows.numel() else None)
    return ranges


def _merged(layout, keys, per_head, world_size, ranges_of):
    tables = []
    for rank in range(world_size):
        ranges = ranges_of(layout, rank, world_size)
        pieces, targets = plan_pieces(layout, keys, per_head, ranges)
        tables.append(reduce_pieces(pieces, targets, ranges, per_head, len(keys), torch.device("cpu")))
    return merge_rows(torch.cat(tables), torch.arange(len(keys)).repeat(world_size), len(keys))


@pytest.mark.parametrize("family", ["gpt2", "gpt_neox", "mistral", "opt"])
@pytest.mark.parametrize("ranges_of", [_zero3_ranges, _row_chunk_ranges], ids=["zero3", "row_chunks"])
def test_sharded_moments_equal_whole_weight(family, ranges_of):
    torch.manual_seed(0)
    if family == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel

        model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=24, n_head=3, vocab_size=50))
    else:
        model = FAMILIES[family]()
    layout = detect_layout(model)
    keys = row_keys(layout, per_head=True)
    whole = compute_moments(layout.views(), True, torch.zeros((len(keys), 3), dtype=torch.float64))
    expected = moments_to_statistics(whole.numpy())

    for world_size in (2, 3, 5, 7):
        merged = _merged(layout, keys, True, world_size, ranges_of).numpy()
        np.testing.assert_array_equal(merged[:, 0], whole[:, 0].numpy())
        statistics = moments_to_statistics(merged)
        np.testing.assert_allclose(statistics["variance"], expected["variance"], rtol=1e-6)
        np.testing.assert_allclose(statistics["mean"], expected["mean"], rtol=0, atol=1e-6 * expected["std"].min())


def test_rectangles_cover_range_once():
    for start, end, columns in [(0, 60, 12), (5, 60, 12), (5, 7, 12), (13, 47, 12), (24, 36, 12), (11, 13, 12)]:
        covered = []
        for offset, row, n_rows, col, n_cols in _rectangles(start, end, columns):
            assert n_rows == 1 or (col == 0 and n_cols == columns)
            covered.extend(row * columns + col + r * columns + c for r in range(n_rows) for c in range(n_cols))
            assert offset == row * columns + col - start
        assert covered == list(range(start, end))


def test_projection_only_rows_skip_heads():
    model = FAMILIES["gpt_neox"]()
    layout = detect_layout(model)
    keys = row_keys(layout, per_head=False)
    whole = compute_moments(layout.views(), False, torch.zeros((len(keys), 3), dtype=torch.float64))
    merged = _merged(layout, keys, False, 3, _zero3_ranges)
    np.testing.assert_allclose(merged[:, 2].numpy(), whole[:, 2].numpy(), rtol=1e-6)
