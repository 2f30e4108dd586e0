"""Parameter roles, layers and true fans for every supported model family."""

import pytest
import torch
import transformers
from torch import nn

from hf_initvar.init import ROLES, apply_init, classify_parameters, get_scheme
from hf_initvar.models.mlp import ReluMLP, ReluMLPConfig

WIDTH = 64
N_LAYER = 3
N_HEAD = 4
VOCAB = 96


def build(model_type: str) -> nn.Module:
    """Build a tiny model of `model_type` with transformers' own init."""
    torch.manual_seed(0)
    if model_type == "gpt2":
        config = transformers.GPT2Config(
            n_layer=N_LAYER, n_embd=WIDTH, n_head=N_HEAD, vocab_size=VOCAB, n_positions=32,
            bos_token_id=0, eos_token_id=0,
        )
        return transformers.GPT2LMHeadModel(config)
    if model_type == "relu_mlp":
        return ReluMLP(ReluMLPConfig(input_size=20, hidden_sizes=[WIDTH] * N_LAYER, num_labels=5, bias=True))
    config = transformers.AutoConfig.for_model(
        model_type,
        num_hidden_layers=N_LAYER,
        hidden_size=WIDTH,
        num_attention_heads=N_HEAD,
        num_key_value_heads=2,
        intermediate_size=4 * WIDTH,
        vocab_size=VOCAB,
        max_position_embeddings=32,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=0,
    )
    auto = transformers.AutoModelForMaskedLM if model_type in ("bert", "roberta") else transformers.AutoModelForCausalLM
    return auto.from_config(config)


def roles_by_suffix(model: nn.Module) -> dict[str, tuple[str, int | None, int, int]]:
    return {name: (info.role, info.layer, info.fan_in, info.fan_out) for name, info in classify_parameters(model).items()}


def test_gpt2_roles_and_conv1d_fans():
    infos = classify_parameters(build("gpt2"))

    assert infos["transformer.wte.weight"].role == "embedding"
    assert infos["transformer.wpe.weight"].role == "position_embedding"
    c_attn = infos["transformer.h.2.attn.c_attn.weight"]
    assert (c_attn.role, c_attn.layer, c_attn.n_layer) == ("qkv", 2, N_LAYER)
    assert (c_attn.fan_in, c_attn.fan_out, c_attn.n_fused, c_attn.transposed) == (WIDTH, WIDTH, 3, True)
    c_fc = infos["transformer.h.0.mlp.c_fc.weight"]
    assert (c_fc.role, c_fc.fan_in, c_fc.fan_out, c_fc.transposed) == ("mlp_in", WIDTH, 4 * WIDTH, True)
    mlp_proj = infos["transformer.h.1.mlp.c_proj.weight"]
    assert (mlp_proj.role, mlp_proj.layer, mlp_proj.fan_in, mlp_proj.fan_out) == ("mlp_out", 1, 4 * WIDTH, WIDTH)
    assert infos["transformer.h.1.attn.c_proj.weight"].role == "attn_out"
    assert infos["transformer.h.1.attn.c_attn.bias"].role == "bias"
    assert infos["transformer.h.1.ln_2.weight"].role == "norm"
    assert infos["transformer.ln_f.bias"].role == "norm"
    assert infos["transformer.ln_f.bias"].layer is None


def test_gpt2_tied_lm_head_listed_once_as_embedding():
    infos = classify_parameters(build("gpt2"))

    assert "lm_head.weight" not in infos
    assert [info.role for info in infos.values()].count("embedding") == 1


def test_bare_gpt2_model_gets_layers_without_prefix():
    model = transformers.GPT2Model(build("gpt2").config)
    infos = classify_parameters(model)

    assert infos["h.1.attn.c_attn.weight"].layer == 1
    assert infos["wte.weight"].role == "embedding"


def test_kaiming_conv1d_true_fan_in():
    # Width 256: torch's fan helper on the stored [256, 1024] tensor would read fan_in 1024 and
    # give √(2/1024) = 0.0442; the true fan-in 256 gives √(2/256) = 0.0884.
    config = transformers.GPT2Config(n_layer=1, n_embd=256, n_head=4, vocab_size=64, n_positions=8, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(config)
    torch.manual_seed(1)
    apply_init(model, "kaiming_normal")

    weight = model.transformer.h[0].mlp.c_fc.weight
    measured = weight.pow(2).mean().sqrt().item()
    tolerance = 5 * 0.0884 / (2 * weight.numel()) ** 0.5
    assert abs(measured - (2 / 256) ** 0.5) < tolerance


@pytest.mark.parametrize("model_type", ["llama", "mistral", "qwen2"])
def test_llama_family_roles_with_grouped_kv(model_type):
    infos = classify_parameters(build(model_type))

    prefix = "model.layers.1."
    assert infos["model.embed_tokens.weight"].role == "embedding"
    q, k, v = (infos[prefix + f"self_attn.{p}_proj.weight"] for p in "qkv")
    assert (q.role, k.role, v.role) == ("q", "k", "v")
    assert (q.fan_in, q.fan_out) == (WIDTH, WIDTH)
    # Two key/value heads of 16: K and V project to 32.
    assert (k.fan_in, k.fan_out, k.layer) == (WIDTH, 32, 1)
    assert infos[prefix + "self_attn.o_proj.weight"].role == "attn_out"
    assert infos[prefix + "mlp.gate_proj.weight"].role == "mlp_in"
    assert infos[prefix + "mlp.up_proj.weight"].role == "mlp_in"
    down = infos[prefix + "mlp.down_proj.weight"]
    assert (down.role, down.fan_in, down.fan_out) == ("mlp_out", 4 * WIDTH, WIDTH)
    assert infos["model.norm.weight"].role == "norm"
    assert infos["lm_head.weight"].role == "lm_head"


def test_qwen2_qkv_biases_are_bias_role():
    infos = classify_parameters(build("qwen2"))

    assert infos["model.layers.0.self_attn.k_proj.bias"].role == "bias"
    assert infos["model.layers.0.self_attn.k_proj.bias"].fan_in == WIDTH


def test_gpt_neox_fused_qkv_interleaved_per_head():
    infos = classify_parameters(build("gpt_neox"))

    qkv = infos["gpt_neox.layers.2.attention.query_key_value.weight"]
    assert (qkv.role, qkv.layer, qkv.n_fused, qkv.fused_heads) == ("qkv", 2, 3, N_HEAD)
    assert (qkv.fan_in, qkv.fan_out, qkv.transposed) == (WIDTH, WIDTH, False)
    assert infos["gpt_neox.layers.2.attention.dense.weight"].role == "attn_out"
    assert infos["gpt_neox.layers.2.mlp.dense_h_to_4h.weight"].role == "mlp_in"
    assert infos["gpt_neox.layers.2.mlp.dense_4h_to_h.weight"].role == "mlp_out"
    assert infos["gpt_neox.embed_in.weight"].role == "embedding"
    assert infos["lm_head.weight"].role == "lm_head"


@pytest.mark.parametrize("model_type", ["bert", "roberta"])
def test_bert_family_roles(model_type):
    model = build(model_type)
    infos = classify_parameters(model)
    base = model.base_model_prefix

    assert infos[f"{base}.embeddings.word_embeddings.weight"].role == "embedding"
    assert infos[f"{base}.embeddings.word_embeddings.weight"].padding_idx == 1
    assert infos[f"{base}.embeddings.token_type_embeddings.weight"].role == "embedding"
    assert infos[f"{base}.embeddings.position_embeddings.weight"].role == "position_embedding"
    layer = f"{base}.encoder.layer.1."
    assert [infos[layer + f"attention.self.{p}.weight"].role for p in ("query", "key", "value")] == ["q", "k", "v"]
    assert infos[layer + "attention.output.dense.weight"].role == "attn_out"
    assert infos[layer + "intermediate.dense.weight"].role == "mlp_in"
    assert infos[layer + "output.dense.weight"].role == "mlp_out"
    assert infos[layer + "output.LayerNorm.weight"].role == "norm"
    assert infos[layer + "output.dense.weight"].layer == 1
    head_dense = "cls.predictions.transform.dense.weight" if model_type == "bert" else "lm_head.dense.weight"
    assert infos[head_dense].role == "hidden"
    head_bias = "cls.predictions.bias" if model_type == "bert" else "lm_head.bias"
    assert (infos[head_bias].role, infos[head_bias].fan_out) == ("bias", VOCAB)


def test_relu_mlp_hidden_layers_and_classifier():
    infos = classify_parameters(build("relu_mlp"))

    first = infos["layers.0.weight"]
    assert (first.role, first.layer, first.n_layer, first.fan_in, first.fan_out) == ("hidden", 0, 4, 20, WIDTH)
    assert infos["layers.2.weight"].role == "hidden"
    last = infos["layers.3.weight"]
    assert (last.role, last.layer, last.fan_in, last.fan_out) == ("classifier", 3, WIDTH, 5)
    assert infos["layers.3.bias"].role == "bias"


@pytest.mark.parametrize("model_type", ["gpt2", "llama", "qwen2", "gpt_neox", "bert", "roberta", "relu_mlp"])
def test_every_parameter_gets_a_known_role(model_type):
    model = build(model_type)
    infos = classify_parameters(model)

    assert set(infos) == {name for name, _ in model.named_parameters()}
    assert {info.role for info in infos.values()} <= set(ROLES)


def test_unsupported_model_type_names_supported_ones():
    model = transformers.AutoModelForCausalLM.from_config(
        transformers.AutoConfig.for_model("gptj", n_layer=1, n_embd=32, n_head=4, vocab_size=64, rotary_dim=8)
    )
    with pytest.raises(ValueError, match=r"model_type 'gptj'.*did you mean 'gpt2'.*Supported"):
        classify_parameters(model)


def test_init_tensor_rejects_wrong_block_shape():
    info = classify_parameters(build("relu_mlp"))["layers.1.weight"]

    with pytest.raises(ValueError, match="block shape"):
        get_scheme("xavier_normal").init_tensor(torch.empty(3, WIDTH + 1, WIDTH), info)
