import pytest
import torch
from transformers import (
    AttentionInterface,
    BertConfig,
    BertModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    OPTConfig,
    OPTForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    RobertaConfig,
    RobertaForMaskedLM,
)
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from hf_initvar.tracking.layouts import PROJECTIONS, detect_layout, register_layout, supported_model_types

captured: list[dict] = []


def _capturing_attention(module, query, key, value, attention_mask, **kwargs):
    """Record the q, k, v that the model's own attention forward computed, then run sdpa."""
    captured.append({"module": module, "q": query.detach(), "k": key.detach(), "v": value.detach()})
    return ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register("hf_initvar_capture", _capturing_attention)

SMALL = dict(hidden_size=24, num_attention_heads=3, intermediate_size=32, vocab_size=50)
# Positions are all zero in the forward check, so rotary embeddings rotate by angle 0 and leave q, k unchanged.
FAMILIES = {
    "llama": lambda: LlamaForCausalLM(LlamaConfig(num_hidden_layers=2, num_key_value_heads=3, **SMALL)),
    "mistral": lambda: MistralForCausalLM(MistralConfig(num_hidden_layers=2, num_key_value_heads=1, **SMALL)),
    "qwen2": lambda: Qwen2ForCausalLM(Qwen2Config(num_hidden_layers=2, num_key_value_heads=1, **SMALL)),
    "llama_gqa_head_dim": lambda: LlamaForCausalLM(
        LlamaConfig(num_hidden_layers=2, num_key_value_heads=1, head_dim=10, attention_bias=True, **SMALL)
    ),
    "gpt_neox": lambda: GPTNeoXForCausalLM(GPTNeoXConfig(num_hidden_layers=2, rotary_pct=0.5, **SMALL)),
    "bert": lambda: BertModel(BertConfig(num_hidden_layers=2, **SMALL)),
    "roberta": lambda: RobertaForMaskedLM(RobertaConfig(num_hidden_layers=2, pad_token_id=1, **SMALL)),
    "opt": lambda: OPTForCausalLM(
        OPTConfig(num_hidden_layers=2, hidden_size=24, num_attention_heads=3, ffn_dim=32, word_embed_proj_dim=24, vocab_size=50)
    ),
}


def _forward_qkv(model, layout, input_ids):
    """Run the model; return per layer the captured q, k, v `(B, heads, T, head_dim)` and the input of each projection."""
    captured.clear()
    inputs = {}
    hooks = []
    for placement in layout.placements:
        key = (placement.layer, placement.projection)
        hook = placement.module.register_forward_pre_hook(lambda module, args, key=key: inputs.__setitem__(key, args[0]))
        hooks.append(hook)
    model.set_attn_implementation("hf_initvar_capture")
    kwargs = {}
    if model.config.model_type in ("llama", "mistral", "qwen2", "gpt_neox"):
        kwargs["position_ids"] = torch.zeros_like(input_ids)
    with torch.no_grad():
        model(input_ids=input_ids, **kwargs)
    for hook in hooks:
        hook.remove()
    return captured[:], inputs


def _randomize_biases(model):
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.normal_()


def _check_heads_match_forward(model, layout):
    generator = torch.Generator().manual_seed(1)
    input_ids = torch.randint(3, model.config.vocab_size, (2, 7), generator=generator)
    forward, inputs = _forward_qkv(model, layout, input_ids)
    assert len(forward) == layout.n_layer

    for placement, view in zip(layout.placements, layout.views()):
        expected = forward[placement.layer][placement.projection]  # (B, heads, T, head_dim)
        assert view.weight.shape == (expected.shape[1], inputs[(placement.layer, placement.projection)].shape[-1], expected.shape[3])
        bias = getattr(placement.module, "bias", None)
        scale = getattr(forward[placement.layer]["module"], "scaling", 1.0) if model.config.model_type == "opt" and placement.projection == "q" else 1.0
        x = inputs[(placement.layer, placement.projection)]  # (B, T, in)
        for head in range(placement.n_heads):
            from_slice = x @ view.weight[head]  # (B, T, head_dim)
            if bias is not None:
                start = placement.offset + head * placement.head_stride
                from_slice = from_slice + bias[start : start + placement.head_dim]
            torch.testing.assert_close(from_slice * scale, expected[:, head], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_head_slices_match_attention_forward(family):
    torch.manual_seed(0)
    model = FAMILIES[family]().eval()
    _randomize_biases(model)
    layout = detect_layout(model)

    assert layout.n_layer == 2
    assert [(p.layer, p.projection) for p in layout.placements] == [(layer, p) for layer in range(2) for p in PROJECTIONS]
    _check_heads_match_forward(model, layout)


def test_gqa_key_value_have_fewer_heads():
    model = FAMILIES["mistral"]()
    layout = detect_layout(model)
    assert layout.n_head == 3
    assert layout.n_kv_head == 1
    assert [view.weight.shape[0] for view in layout.views()[:3]] == [3, 1, 1]


def test_gpt2_head_slices_match_attention_forward(tiny_gpt2):
    _randomize_biases(tiny_gpt2)
    layout = detect_layout(tiny_gpt2)
    assert (layout.n_layer, layout.n_head, layout.head_dim) == (3, 3, 8)
    _check_heads_match_forward(tiny_gpt2, layout)


def test_neox_heads_are_interleaved():
    model = FAMILIES["gpt_neox"]()
    layout = detect_layout(model)
    weight = model.gpt_neox.layers[0].attention.query_key_value.weight  # (3 * hidden, hidden)
    k_view = layout.views()[1].weight  # layer 0, k: (heads, in, head_dim)
    # Head 1 of K is rows 3*8 + 8 .. 3*8 + 16 of the fused weight.
    torch.testing.assert_close(k_view[1], weight[32:40].T, rtol=0, atol=0)


def test_placement_names_are_parameter_names():
    for family in ("llama", "gpt_neox", "bert", "opt"):
        model = FAMILIES[family]()
        names = dict(model.named_parameters())
        for placement in detect_layout(model).placements:
            assert names[placement.name] is placement.weight()


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


def test_supported_model_types_cover_families():
    assert set(supported_model_types()) >= {"gpt2", "gpt_neox", "llama", "mistral", "qwen2", "bert", "roberta", "opt"}


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
