import numpy as np
import torch

from hf_initvar.tracking.layouts import ProjectionView, detect_layout
from hf_initvar.tracking.stats import FeatureSums, compute_moments, merge_moments, moments_to_statistics, row_keys


def _statistics(views, per_head):
    keys_per_view = 1 + (views[0].weight.shape[0] if per_head else 0)
    out = torch.zeros((len(views) * keys_per_view, 3), dtype=torch.float64)
    return moments_to_statistics(compute_moments(views, per_head, out).numpy())


def test_projection_statistics_match_float64_reference(tiny_gpt2):
    layout = detect_layout(tiny_gpt2)
    views = layout.views()
    statistics = _statistics(views, per_head=False)

    width = tiny_gpt2.config.n_embd
    for row, view in enumerate(views):
        weight = tiny_gpt2.transformer.h[view.layer].attn.c_attn.weight.detach().double()
        block = weight[:, "qkv".index(view.projection) * width :][:, :width]
        assert np.isclose(statistics["variance"][row], block.var(unbiased=False).item(), rtol=1e-6, atol=0)
        assert np.isclose(statistics["std"][row], block.std(unbiased=False).item(), rtol=1e-6, atol=0)
        assert np.isclose(statistics["mean"][row], block.mean().item(), rtol=1e-6, atol=1e-9)
        assert np.isclose(statistics["rms"][row], block.pow(2).mean().sqrt().item(), rtol=1e-6, atol=0)


def test_per_head_rows_follow_their_projection(tiny_gpt2):
    layout = detect_layout(tiny_gpt2)
    keys = row_keys(layout, per_head=True)
    statistics = _statistics(layout.views(), per_head=True)

    assert len(keys) == 3 * 3 * (1 + 3)
    assert keys[:5] == [(0, "q", -1), (0, "q", 0), (0, "q", 1), (0, "q", 2), (0, "k", -1)]
    weight = tiny_gpt2.transformer.h[2].attn.c_attn.weight.detach().double()
    row = keys.index((2, "v", 1))
    head = weight[:, 48 + 8 : 48 + 16]  # v block starts at column 48; head 1 is columns 8..15 of it
    assert np.isclose(statistics["variance"][row], head.var(unbiased=False).item(), rtol=1e-6)
    assert np.isclose(statistics["mean"][row], head.mean().item(), rtol=1e-6, atol=1e-9)


def test_variance_exact_when_mean_dominates():
    # LayerNorm-like weights: mean 1, std 1e-3. A float32 sum-of-squares formula loses all digits here.
    generator = torch.Generator().manual_seed(0)
    weight = 1.0 + 1e-3 * torch.randn(4, 64, 16, generator=generator)
    statistics = _statistics([ProjectionView(0, "q", weight)], per_head=False)
    reference = weight.double().var(unbiased=False).item()
    assert np.isclose(statistics["variance"][0], reference, rtol=1e-4)


def test_merged_shard_moments_equal_whole_tensor():
    generator = torch.Generator().manual_seed(0)
    weight = 3.0 + 0.5 * torch.randn(1, 40, 8, generator=generator, dtype=torch.float64)
    whole = torch.zeros((1, 3), dtype=torch.float64)
    compute_moments([ProjectionView(0, "q", weight)], False, whole)
    first, second = torch.zeros((1, 3), dtype=torch.float64), torch.zeros((1, 3), dtype=torch.float64)
    compute_moments([ProjectionView(0, "q", weight[:, :13])], False, first)
    compute_moments([ProjectionView(0, "q", weight[:, 13:])], False, second)

    merged = merge_moments(first.numpy(), second.numpy())
    np.testing.assert_allclose(merged, whole.numpy(), rtol=1e-12)


def test_nonfinite_weights_give_nan_statistics():
    weight = torch.ones(1, 4, 4)
    weight[0, 0, 0] = float("nan")
    statistics = _statistics([ProjectionView(0, "q", weight)], per_head=False)
    assert np.isnan(statistics["variance"][0])
    assert np.isnan(statistics["mean"][0])


def test_feature_sums_match_views_for_every_row(tiny_gpt2):
    layout = detect_layout(tiny_gpt2)
    keys = row_keys(layout, per_head=True)
    from_views = compute_moments(layout.views(), True, torch.zeros((len(keys), 3), dtype=torch.float64))
    from_sums = FeatureSums(layout, True).compute(torch.zeros((len(keys), 3), dtype=torch.float64))

    np.testing.assert_array_equal(from_sums[:, 0].numpy(), from_views[:, 0].numpy())
    # var_mean returns float32, so the views agree to float32 rounding (about 6e-8 relative).
    np.testing.assert_allclose(from_sums[:, 2].numpy(), from_views[:, 2].numpy(), rtol=1e-6)


def test_feature_sums_exact_when_mean_dominates(tiny_gpt2):
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for block in tiny_gpt2.transformer.h:
            weight = block.attn.c_attn.weight
            weight.copy_(1.0 + 1e-3 * torch.randn(weight.shape, generator=generator))
    layout = detect_layout(tiny_gpt2)
    keys = row_keys(layout, per_head=False)
    statistics = moments_to_statistics(FeatureSums(layout, False).compute(torch.zeros((len(keys), 3), dtype=torch.float64)).numpy())

    width = tiny_gpt2.config.n_embd
    for row, (layer, projection, _head) in enumerate(keys):
        block = tiny_gpt2.transformer.h[layer].attn.c_attn.weight.detach().double()
        reference = block[:, "qkv".index(projection) * width :][:, :width].var(unbiased=False).item()
        assert np.isclose(statistics["variance"][row], reference, rtol=1e-9)
