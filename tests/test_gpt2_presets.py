import pytest

from hf_initvar.models.gpt2 import PRESETS, build_gpt2_config, get_preset, parse_config_overrides


def test_gpt2_124m_preset_is_the_paper_model():
    config = build_gpt2_config("gpt2-124m", vocab_size=50257, bos_token_id=50256, eos_token_id=50256, overrides={})
    assert (config.n_layer, config.n_head, config.n_embd, config.n_positions) == (12, 12, 768, 1024)
    from transformers import GPT2LMHeadModel

    with __import__("torch").device("meta"):
        model = GPT2LMHeadModel(config)
    assert round(model.num_parameters() / 1e6) == 124


def test_quick_preset_has_twelve_layers():
    assert get_preset("quick").model["n_layer"] == 12
    assert set(PRESETS) >= {"quick", "gpt2-124m", "tiny"}


def test_overrides_apply_last_and_parse_types():
    overrides = parse_config_overrides("n_embd=64,n_head=8,resid_pdrop=0.0,activation_function=gelu_new,scale_attn_weights=false")
    config = build_gpt2_config("quick", vocab_size=100, bos_token_id=0, eos_token_id=0, overrides=overrides)
    assert config.n_embd == 64
    assert config.n_head == 8
    assert config.resid_pdrop == 0.0
    assert config.activation_function == "gelu_new"
    assert config.scale_attn_weights is False


def test_bad_overrides_and_presets_are_rejected():
    with pytest.raises(ValueError, match="'n_embed' is not a GPT2Config field. Did you mean 'n_embd'"):
        parse_config_overrides("n_embed=64")
    with pytest.raises(ValueError, match="not of the form name=value"):
        parse_config_overrides("n_embd")
    with pytest.raises(ValueError, match="unknown preset 'gpt2-124'. Did you mean 'gpt2-124m'"):
        get_preset("gpt2-124")
    with pytest.raises(ValueError, match="n_embd=100 is not divisible by n_head=3"):
        build_gpt2_config("quick", 50, 0, 0, {"n_embd": 100, "n_head": 3})
