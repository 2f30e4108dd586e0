import pytest
import torch
from transformers import AttentionInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from hf_initvar.tracking.layouts import PROJECTIONS, detect_layout, register_layout, supported_model_types

captured: list[dict] = []


def _capturing_attention(module, query, key, value, attention_mask, **kwargs):
    """Record the q, k, v that the model's own attention forward computed, then run sdpa."""
    captured.append({"layer": module.layer_idx, "q": query.detach(), "k": key.detach(), "v": value.detach()})
    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register("hf_initvar_capture", _capturing_attention)


def _forward_qkv(model, input_ids):
    """Run the model and return {layer: {"q"|"k"|"v": (B, heads, T, head_dim)}} plus each layer's input."""
    captured.clear()
    layer_inputs = {}
    hooks = [
        block.attn.c_attn.register_forward_hook(lambda module, args, out, layer=layer: layer_inputs.__setitem__(layer, args[0]))
        for layer, block in enumerate(model.transformer.h)
    ]
    model.set_attn_implementation("hf_initvar_capture")
    with torch.no_grad():
        model(input_ids=input_ids)
    for hook in hooks:
        hook.remove()
    return {entry["layer"]: entry for entry in captured}, layer_inputs


def test_gpt2_head_slices_match_attention_forward(tiny_gpt2):
    model = tiny_gpt2
    with torch.no_grad():
        for block in model.transformer.h:  # non-zero biases, so a wrong bias slice would show
            block.attn.c_attn.bias.normal_()
    layout = detect_layout(model)
    input_ids = torch.randint(0, model.config.vocab_size, (2, 7), generator=torch.Generator().manual_seed(1))
    forward, layer_inputs = _forward_qkv(model, input_ids)

    assert layout.n_layer == 3
    assert layout.n_head == 3
    assert layout.head_dim == 8
    views = layout.views()
    assert [(view.layer, view.projection) for view in views] == [(layer, p) for layer in range(3) for p in PROJECTIONS]
    width = model.config.n_embd
    for view in views:
        bias = model.transformer.h[view.layer].attn.c_attn.bias
        block_bias = bias[PROJECTIONS.index(view.projection) * width :][:width].view(layout.n_head, layout.head_dim)
        x = layer_inputs[view.layer]  # (B, T, in)
        expected = forward[view.layer][view.projection]  # (B, heads, T, head_dim)
        assert view.weight.shape == (layout.n_head, width, layout.head_dim)
        for head in range(layout.n_head):
            from_slice = x @ view.weight[head] + block_bias[head]  # (B, T, head_dim)
            torch.testing.assert_close(from_slice, expected[:, head], rtol=1e-5, atol=1e-6)


def test_gpt2_views_share_storage_with_weights(tiny_gpt2):
    layout = detect_layout(tiny_gpt2)
    weight = tiny_gpt2.transformer.h[1].attn.c_attn.weight
    view = layout.views()[4]  # layer 1, k
    assert view.weight.data_ptr() == weight[:, 24:].data_ptr()
    with torch.no_grad():
        weight[0, 24] = 123.0
    assert view.weight[0, 0, 0].item() == 123.0


def test_unknown_model_type_lists_supported():
    model = torch.nn.Linear(2, 2)
    model.config = type("Config", (), {"model_type": "gpt3"})()
    with pytest.raises(ValueError, match=r"model type 'gpt3'.*Did you mean 'gpt2'.*Supported model types: .*gpt2"):
        detect_layout(model)


def test_registered_layout_is_detected(tiny_gpt2):
    from hf_initvar.tracking.layouts import _LAYOUTS, gpt2_layout

    register_layout("my_gpt")(gpt2_layout)
    try:
        tiny_gpt2.config.model_type = "my_gpt"
        assert "my_gpt" in supported_model_types()
        assert detect_layout(tiny_gpt2).n_layer == 3
    finally:
        del _LAYOUTS["my_gpt"]
        tiny_gpt2.config.model_type = "gpt2"
