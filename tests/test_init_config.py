"""The scheme recorded on the config: from_config, save/reload round trips, missing keys, CLI."""

import json
import math

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from hf_initvar.cli import main
from hf_initvar.init import apply_config_init, apply_init, from_config, from_pretrained, intended_stds

WIDTH = 64
N_LAYER = 3


def gpt2_config(**extra) -> transformers.GPT2Config:
    return transformers.GPT2Config(
        n_layer=N_LAYER, n_embd=WIDTH, n_head=4, vocab_size=96, n_positions=32, bos_token_id=0, eos_token_id=0, **extra
    )


def rms(tensor: torch.Tensor) -> float:
    return tensor.detach().double().pow(2).mean().sqrt().item()


def within_sampling_error(measured: float, std: float, count: int) -> bool:
    # 5 standard errors of a std estimated from `count` normal draws.
    return abs(measured - std) <= 5 * std / math.sqrt(2 * count)


def test_from_config_draws_recorded_scheme():
    config = gpt2_config(init_scheme="depth_scaled", init_args={"std": 0.03})
    torch.manual_seed(0)
    model = from_config(transformers.AutoModelForCausalLM, config)

    for layer, block in enumerate(model.transformer.h):
        weight = block.mlp.c_proj.weight
        assert within_sampling_error(rms(weight), 0.03 / math.sqrt(2 * (layer + 1)), weight.numel()), layer
    assert within_sampling_error(rms(model.transformer.h[0].mlp.c_fc.weight), 0.03, WIDTH * 4 * WIDTH)


def test_from_config_same_seed_reproducible():
    config = gpt2_config(init_scheme="mup", init_args={"base_width": 32})
    torch.manual_seed(1)
    first = from_config(transformers.GPT2LMHeadModel, config)
    torch.manual_seed(1)
    second = from_config(transformers.GPT2LMHeadModel, config)

    for (name, a), b in zip(first.named_parameters(), second.parameters()):
        assert torch.equal(a, b), name


def test_config_without_scheme_keeps_transformers_init():
    model = transformers.GPT2LMHeadModel(gpt2_config())
    before = model.transformer.h[0].attn.c_attn.weight.clone()

    assert apply_config_init(model) is False
    assert torch.equal(model.transformer.h[0].attn.c_attn.weight, before)


def test_save_reload_keeps_weights_and_scheme(tmp_path):
    model = transformers.GPT2LMHeadModel(gpt2_config())
    apply_init(model, {"default": "mitchell", "qkv": ("orthogonal", {"gain": 0.5})}, generator=torch.Generator().manual_seed(2))
    model.save_pretrained(tmp_path)

    reloaded = from_pretrained(transformers.GPT2LMHeadModel, str(tmp_path))

    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["init_scheme"] == {"default": ["mitchell", {}], "qkv": ["orthogonal", {"gain": 0.5}]}
    assert reloaded.config.init_scheme == saved["init_scheme"]
    for (name, original), loaded in zip(model.named_parameters(), reloaded.parameters()):
        assert torch.equal(original, loaded), name
    assert intended_stds(reloaded) == intended_stds(model)


def test_apply_init_never_writes_loaded_weights(tmp_path):
    model = transformers.GPT2LMHeadModel(gpt2_config())
    apply_init(model, "gpt2")
    model.save_pretrained(tmp_path)
    reloaded = transformers.GPT2LMHeadModel.from_pretrained(tmp_path)

    apply_init(reloaded, "xavier_uniform")

    for (name, original), loaded in zip(model.named_parameters(), reloaded.parameters()):
        assert torch.equal(original, loaded), name


def test_missing_keys_get_recorded_scheme_with_layer_depth(tmp_path):
    # mitchell: every weight 1/√fan_in, residual outputs also / √(2(l+1)), truncated at ±3σ.
    model = transformers.GPT2LMHeadModel(gpt2_config())
    apply_init(model, "mitchell", generator=torch.Generator().manual_seed(3))
    model.save_pretrained(tmp_path)
    weights_file = tmp_path / "model.safetensors"
    state = load_file(weights_file)
    missing = ["transformer.h.1.attn.c_attn.weight", "transformer.h.1.attn.c_proj.weight"]
    for key in missing:
        del state[key]
    save_file(state, weights_file, metadata={"format": "pt"})

    torch.manual_seed(4)
    reloaded = from_pretrained(transformers.GPT2LMHeadModel, str(tmp_path))

    truncation = 0.98658  # std of N(0, 1) truncated at ±3
    c_attn = reloaded.transformer.h[1].attn.c_attn.weight
    c_proj = reloaded.transformer.h[1].attn.c_proj.weight
    assert within_sampling_error(rms(c_attn), truncation / math.sqrt(WIDTH), c_attn.numel())
    assert within_sampling_error(rms(c_proj), truncation / math.sqrt(WIDTH) / math.sqrt(2 * 2), c_proj.numel())
    assert not torch.equal(c_attn, model.transformer.h[1].attn.c_attn.weight)
    original = dict(model.named_parameters())
    for name, loaded in reloaded.named_parameters():
        if name not in missing:
            assert torch.equal(original[name], loaded), name
    assert reloaded.lm_head.weight is reloaded.transformer.wte.weight


def test_cli_lists_every_scheme(capsys):
    from hf_initvar.init import list_schemes

    assert main(["schemes"]) == 0
    output = capsys.readouterr().out
    for name in list_schemes():
        assert f"\n{name}(" in f"\n{output}", name
    assert "formula: N(0, 2/(5d))" in output


def test_cli_prints_gpt2_124m_intended_stds(capsys):
    assert main(["schemes", "gpt2-124m", "gpt2", "mitchell"]) == 0
    output = capsys.readouterr().out

    attn_out_rows = [line.split() for line in output.splitlines() if line.startswith("attn_out")]
    # gpt2: one row for layers 0-11 at 0.02/√24; mitchell: one row per layer, layer 0 first.
    assert attn_out_rows[0][2] == "0-11"
    assert float(attn_out_rows[0][-1]) == pytest.approx(0.02 / math.sqrt(24), rel=1e-5)
    assert attn_out_rows[1][2] == "0"
    assert float(attn_out_rows[1][-1]) == pytest.approx(0.986577 / math.sqrt(768 * 2), rel=1e-5)
    assert len(attn_out_rows) == 1 + 12


def test_cli_explicit_model_size_and_init_args(capsys):
    assert main(["schemes", "normal", "--model", "llama", "--n_layer", "2", "--n_embd", "128", "--init_args", "std=0.05"]) == 0
    output = capsys.readouterr().out

    assert "LlamaForCausalLM (2 layers, width 128)" in output
    assert [line.split()[-1] for line in output.splitlines() if line.startswith("q ")] == ["0.05"]


def test_cli_unknown_scheme_exits_with_suggestion(capsys):
    assert main(["schemes", "xavir_normal", "--model", "gpt2-124m"]) == 2
    assert "did you mean 'xavier_normal'?" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("model_type", "missing_key"),
    [("llama", "model.layers.2.self_attn.o_proj.weight"), ("gpt_neox", "gpt_neox.layers.2.attention.dense.weight")],
)
def test_missing_attn_out_gets_layer_depth(tmp_path, model_type, missing_key):
    # depth_scaled: attn_out of layer 2 has std 0.02/√(2·3).
    config = transformers.AutoConfig.for_model(
        model_type, num_hidden_layers=N_LAYER, hidden_size=WIDTH, num_attention_heads=4,
        intermediate_size=4 * WIDTH, vocab_size=96, bos_token_id=0, eos_token_id=0,
        init_scheme="depth_scaled",
    )
    torch.manual_seed(5)
    model = from_config(transformers.AutoModelForCausalLM, config)
    model.save_pretrained(tmp_path)
    weights_file = tmp_path / "model.safetensors"
    state = load_file(weights_file)
    del state[missing_key]
    save_file(state, weights_file, metadata={"format": "pt"})

    reloaded = from_pretrained(transformers.AutoModelForCausalLM, str(tmp_path))

    redrawn = reloaded.get_parameter(missing_key)
    assert within_sampling_error(rms(redrawn), 0.02 / math.sqrt(6), redrawn.numel())
    assert not torch.equal(redrawn, model.get_parameter(missing_key))
    original = dict(model.named_parameters())
    for name, loaded in reloaded.named_parameters():
        if name != missing_key:
            assert torch.equal(original[name], loaded), name
