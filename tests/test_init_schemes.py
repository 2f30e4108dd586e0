"""Every scheme on every family draws the std it intends; torch-function schemes equal torch.nn.init."""

import math

import pytest
import torch
import transformers
from torch import nn

from hf_initvar.init import (
    ParamInfo,
    Scheme,
    apply_init,
    classify_parameters,
    get_scheme,
    intended_stds,
    list_schemes,
    parse_init_args,
    register_scheme,
    standard_rule,
)
from hf_initvar.init import rules
from hf_initvar.models.mlp import ReluMLP, ReluMLPConfig

WIDTH = 64
N_LAYER = 3
N_HEAD = 4
VOCAB = 96
FAMILIES = ["gpt2", "llama", "mistral", "qwen2", "gpt_neox", "bert", "roberta", "relu_mlp"]
SIGMAS = 5.0


def build(model_type: str, **overrides) -> nn.Module:
    """Build a tiny model of `model_type` with transformers' own init."""
    torch.manual_seed(0)
    if model_type == "gpt2":
        config = transformers.GPT2Config(
            n_layer=N_LAYER, n_embd=WIDTH, n_head=N_HEAD, vocab_size=VOCAB, n_positions=32,
            bos_token_id=0, eos_token_id=0, **overrides,
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
        **overrides,
    )
    auto = transformers.AutoModelForMaskedLM if model_type in ("bert", "roberta") else transformers.AutoModelForCausalLM
    return auto.from_config(config)


@pytest.fixture(scope="module")
def models() -> dict[str, nn.Module]:
    return {model_type: build(model_type) for model_type in FAMILIES}


def rms(tensor: torch.Tensor) -> float:
    # Root mean square: the std of a zero-mean distribution, estimated without removing the
    # sample mean, so it compares directly with the intended std.
    return tensor.detach().double().pow(2).mean().sqrt().item()


def std_tolerance(std: float, count: int) -> float:
    # A std estimated from `count` normal draws is off by about std/√(2·count). Uniform and
    # truncated normal samples have lighter tails, so their error is smaller.
    return SIGMAS * std / math.sqrt(2 * count)


@pytest.mark.parametrize("scheme", list_schemes())
@pytest.mark.parametrize("model_type", FAMILIES)
def test_measured_std_matches_intended(models, model_type, scheme):
    model = models[model_type]
    apply_init(model, scheme, generator=torch.Generator().manual_seed(3))
    intended = intended_stds(model)
    parameters = dict(model.named_parameters())
    infos = classify_parameters(model)

    for name, std in intended.items():
        values = parameters[name]
        if std == 0.0:
            expected = 1.0 if infos[name].role == "norm" and not name.endswith("bias") else 0.0
            assert torch.all(values == expected), f"{name}: expected constant {expected}"
            continue
        measured = rms(values)
        assert abs(measured - std) <= std_tolerance(std, values.numel()), (
            f"{scheme} on {name} ({infos[name].role}): measured {measured:.5g}, intended {std:.5g}"
        )


def _blocks_of(param: torch.Tensor, info: ParamInfo) -> list[torch.Tensor]:
    """Return the [out, in] projections of a stored weight, read the way the model's forward reads them."""
    weight = param.detach()
    if info.transposed:
        # GPT-2 Conv1D: y = x @ W with W [in, out]; c_attn's output splits into Q | K | V columns.
        return [block.t() for block in weight.split(info.fan_out, dim=1)]
    if info.fused_heads is not None:
        # GPT-NeoX: output viewed as (heads, 3·head_dim), then chunked into Q, K, V per head.
        head_dim = info.fan_out // info.fused_heads
        per_head = weight.view(info.fused_heads, 3, head_dim, info.fan_in)
        return [per_head[:, index].reshape(info.fan_out, info.fan_in) for index in range(3)]
    return [weight]


TORCH_FUNCTIONS = {
    "xavier_uniform": lambda t, g: torch.nn.init.xavier_uniform_(t, generator=g),
    "xavier_normal": lambda t, g: torch.nn.init.xavier_normal_(t, generator=g),
    "kaiming_uniform": lambda t, g: torch.nn.init.kaiming_uniform_(t, nonlinearity="relu", generator=g),
    "kaiming_normal": lambda t, g: torch.nn.init.kaiming_normal_(t, nonlinearity="relu", generator=g),
    "orthogonal": lambda t, g: torch.nn.init.orthogonal_(t, generator=g),
}


@pytest.mark.parametrize("scheme", sorted(TORCH_FUNCTIONS))
@pytest.mark.parametrize("model_type", ["gpt2", "gpt_neox", "llama", "bert", "relu_mlp"])
def test_torch_function_schemes_equal_torch_init(models, model_type, scheme):
    model = models[model_type]
    apply_init(model, scheme, generator=torch.Generator().manual_seed(11))
    replay = torch.Generator().manual_seed(11)
    parameters = dict(model.named_parameters())

    for name, info in classify_parameters(model).items():
        if info.role in ("norm", "bias"):
            continue  # constants: no draws
        for block in _blocks_of(parameters[name], info):
            expected = torch.empty(info.fan_out, info.fan_in)
            TORCH_FUNCTIONS[scheme](expected, replay)
            if info.padding_idx is not None:
                expected[info.padding_idx] = 0
            assert torch.equal(block, expected), f"{scheme} differs from torch.nn.init on {name}"


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "relu_mlp"])
def test_torch_default_equals_fresh_torch_layers(models, model_type):
    model = models[model_type]
    torch.manual_seed(5)
    apply_init(model, "torch_default")
    torch.manual_seed(5)
    parameters = dict(model.named_parameters())
    infos = classify_parameters(model)

    for name, info in infos.items():
        if info.role == "bias" or info.role == "norm":
            continue
        module_path = name.rsplit(".", 1)[0]
        has_bias = f"{module_path}.bias" in infos
        if info.role == "embedding":
            layer = nn.Embedding(info.fan_out, info.fan_in, padding_idx=info.padding_idx)
        else:
            layer = nn.Linear(info.fan_in, info.fan_out, bias=has_bias)
        assert torch.equal(parameters[name], layer.weight), name
        if has_bias:
            assert torch.equal(parameters[f"{module_path}.bias"], layer.bias), module_path


def pooled_rms_by_role(model: nn.Module) -> dict[str, tuple[float, int]]:
    sums: dict[str, list[float]] = {}
    parameters = dict(model.named_parameters())
    for name, info in classify_parameters(model).items():
        entry = sums.setdefault(info.role, [0.0, 0])
        entry[0] += parameters[name].detach().double().pow(2).sum().item()
        entry[1] += parameters[name].numel()
    return {role: (math.sqrt(total / count), count) for role, (total, count) in sums.items()}


@pytest.mark.parametrize("initializer_range", [0.02, 0.05])
def test_gpt2_scheme_reproduces_transformers_gpt2_init(initializer_range):
    reference = build("gpt2", initializer_range=initializer_range)  # transformers' own init
    ours = build("gpt2", initializer_range=initializer_range)
    apply_init(ours, "gpt2", generator=torch.Generator().manual_seed(2))
    intended_by_role = {classify_parameters(ours)[name].role: std for name, std in intended_stds(ours).items()}

    assert intended_by_role["attn_out"] == pytest.approx(initializer_range / math.sqrt(2 * N_LAYER))
    assert intended_by_role["qkv"] == pytest.approx(initializer_range)
    for role, (reference_rms, count) in pooled_rms_by_role(reference).items():
        our_rms = pooled_rms_by_role(ours)[role][0]
        if intended_by_role[role] == 0.0:
            assert reference_rms == our_rms, role  # ones for norm gains pooled with zero biases
            continue
        tolerance = std_tolerance(intended_by_role[role], count)
        assert abs(reference_rms - intended_by_role[role]) <= tolerance, f"transformers {role}"
        assert abs(our_rms - intended_by_role[role]) <= tolerance, f"ours {role}"


def test_residual_outputs_keep_scheme_after_transformers_rescale():
    # transformers' GPT-2 init rescales c_proj at block level after any Conv1D rule; apply_init
    # runs afterwards, so xavier reaches c_proj: std √(2/(64+64)) = 0.125, not 0.02/√6.
    model = build("gpt2")
    apply_init(model, "xavier_normal", generator=torch.Generator().manual_seed(4))

    for block in model.transformer.h:
        weight = block.attn.c_proj.weight
        assert abs(rms(weight) - 0.125) <= std_tolerance(0.125, weight.numel())


def test_tied_lm_head_drawn_once_by_embedding_rule():
    model = build("gpt2")
    spec = {"default": "normal", "embedding": ("normal", {"std": 0.5})}
    apply_init(model, spec, generator=torch.Generator().manual_seed(6))

    assert model.lm_head.weight is model.transformer.wte.weight
    assert abs(rms(model.lm_head.weight) - 0.5) <= std_tolerance(0.5, model.lm_head.weight.numel())


def test_lm_head_override_on_tied_gpt2_raises():
    with pytest.raises(ValueError, match="no 'lm_head' parameters"):
        apply_init(build("gpt2"), {"default": "gpt2", "lm_head": "normal"})


def test_per_role_override_composes():
    model = build("llama")
    apply_init(model, {"default": "gpt2", "qkv": ("xavier_normal", {})}, generator=torch.Generator().manual_seed(8))
    stds = intended_stds(model)

    xavier_q = math.sqrt(2 / (WIDTH + WIDTH))
    xavier_k = math.sqrt(2 / (WIDTH + 32))
    assert stds["model.layers.0.self_attn.q_proj.weight"] == pytest.approx(xavier_q)
    assert stds["model.layers.0.self_attn.k_proj.weight"] == pytest.approx(xavier_k)
    assert stds["model.layers.0.self_attn.o_proj.weight"] == pytest.approx(0.02 / math.sqrt(2 * N_LAYER))
    assert stds["model.layers.0.mlp.up_proj.weight"] == pytest.approx(0.02)
    assert model.config.init_scheme["qkv"] == ["xavier_normal", {"gain": 1.0}]


def test_same_seed_gives_identical_weights():
    first, second, third = build("gpt_neox"), build("gpt_neox"), build("gpt_neox")
    apply_init(first, "mitchell", generator=torch.Generator().manual_seed(21))
    apply_init(second, "mitchell", generator=torch.Generator().manual_seed(21))
    apply_init(third, "mitchell", generator=torch.Generator().manual_seed(22))

    for (name, a), b, c in zip(first.named_parameters(), second.parameters(), third.parameters()):
        assert torch.equal(a, b), name
    assert not torch.equal(first.gpt_neox.layers[0].attention.query_key_value.weight, third.gpt_neox.layers[0].attention.query_key_value.weight)


def test_same_global_seed_gives_identical_weights():
    first, second = build("gpt2"), build("gpt2")
    torch.manual_seed(9)
    apply_init(first, "trunc_normal", std=0.1)
    torch.manual_seed(9)
    apply_init(second, "trunc_normal", std=0.1)

    for (name, a), b in zip(first.named_parameters(), second.parameters()):
        assert torch.equal(a, b), name


def test_trunc_normal_intended_std_is_truncated_std():
    # N(0, σ²) truncated at ±2σ has std 0.87962566·σ.
    info = ParamInfo(role="hidden", layer=0, n_layer=1, fan_in=256, fan_out=256)
    assert get_scheme("trunc_normal", std=0.1).intended_std(info) == pytest.approx(0.087962566, rel=1e-7)
    assert get_scheme("mitchell").intended_std(info) == pytest.approx(0.98658 / 16, rel=1e-4)

    weight = torch.empty(256, 256)
    get_scheme("trunc_normal", std=0.1).init_tensor(weight, info, generator=torch.Generator().manual_seed(0))
    assert weight.abs().max().item() <= 0.2
    assert abs(rms(weight) - 0.087962566) <= std_tolerance(0.088, weight.numel())


def test_uniform_intended_std_is_bound_over_root_three():
    info = ParamInfo(role="hidden", layer=0, n_layer=1, fan_in=300, fan_out=100)
    bound = math.sqrt(6 / 400)
    assert get_scheme("xavier_uniform").intended_std(info) == pytest.approx(bound / math.sqrt(3))
    assert get_scheme("torch_default").intended_std(info) == pytest.approx(1 / math.sqrt(3 * 300))


def test_init_tensor_on_stacked_weights_equals_sequential_draws():
    # A batch of 4 MLP layers stored [4, out, in]: slice i equals the i-th of 4 sequential
    # torch.nn.init draws from one generator.
    info = ParamInfo(role="hidden", layer=1, n_layer=4, fan_in=48, fan_out=32)
    stacked = torch.empty(4, 32, 48)
    get_scheme("kaiming_normal").init_tensor(stacked, info, generator=torch.Generator().manual_seed(13))

    replay = torch.Generator().manual_seed(13)
    for index in range(4):
        expected = torch.nn.init.kaiming_normal_(torch.empty(32, 48), nonlinearity="relu", generator=replay)
        assert torch.equal(stacked[index], expected), index


def test_init_tensor_leaves_loaded_tensor_untouched():
    info = ParamInfo(role="hidden", layer=0, n_layer=1, fan_in=8, fan_out=8)
    tensor = torch.full((8, 8), 7.0)
    tensor._is_hf_initialized = True
    get_scheme("normal").init_tensor(tensor, info)

    assert torch.all(tensor == 7.0)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: get_scheme("kaimng_normal"), r"unknown init scheme 'kaimng_normal'; did you mean 'kaiming_normal'\?"),
        (lambda: get_scheme("normal", std=-0.1), r"std must be a finite number above 0, got -0.1"),
        (lambda: get_scheme("normal", std=float("nan")), r"std must be a finite number above 0, got nan"),
        (lambda: get_scheme("trunc_normal", std=float("inf")), r"std must be a finite number above 0, got inf"),
        (lambda: get_scheme("normal", sdt=0.1), r"no argument 'sdt'; did you mean 'std'\?"),
        (lambda: get_scheme("normal", std="big"), r"argument 'std' must be float"),
        (lambda: get_scheme("kaiming_normal", mode="fanin"), r"invalid mode 'fanin'; did you mean 'fan_in'\?"),
        (lambda: apply_init(build("gpt2"), {"default": "gpt2", "qvk": "normal"}), r"unknown role 'qvk'.*did you mean 'qkv'\?"),
        (lambda: apply_init(build("gpt2"), {"qkv": "normal"}), r"no 'default' entry"),
        (lambda: apply_init(build("gpt2"), {"default": "gpt2", "q": "normal"}), r"fused.*override 'qkv' instead"),
        (lambda: apply_init(build("llama"), {"default": "gpt2", "position_embedding": "normal"}), r"no 'position_embedding' parameters"),
    ],
    ids=[
        "unknown-name", "negative-std", "nan-std", "inf-std", "unknown-argument", "string-std", "invalid-mode",
        "unknown-role", "missing-default", "q-on-fused-qkv", "absent-role",
    ],
)
def test_bad_input_raises_with_suggestion(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_register_scheme_adds_user_scheme():
    @register_scheme("test_half_normal")
    class HalfNormal(Scheme):
        """Half the std of normal.

        Formula: N(0, (std/2)²).
        Source: a test.
        """

        std: float = 0.02

        def rule(self, info):
            return standard_rule(info, rules.normal(self.std / 2))

    assert "test_half_normal" in list_schemes()
    model = build("gpt2")
    apply_init(model, "test_half_normal", std=0.2)
    assert intended_stds(model)["transformer.h.0.mlp.c_fc.weight"] == pytest.approx(0.1)
    with pytest.raises(ValueError, match="already registered"):
        register_scheme("test_half_normal")(HalfNormal)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"std": 0.02}', {"std": 0.02}),
        ("std=0.02", {"std": 0.02}),
        ("mode=fan_out, nonlinearity=relu", {"mode": "fan_out", "nonlinearity": "relu"}),
        ("std=1e-2,cutoff=3", {"std": 0.01, "cutoff": 3}),
        ("std=none", {"std": None}),
        ("", {}),
    ],
)
def test_parse_init_args(text, expected):
    assert parse_init_args(text) == expected


@pytest.mark.parametrize("text", ["std", '{"std": 0.02', "[0.02]"])
def test_parse_init_args_rejects_malformed_text(text):
    with pytest.raises(ValueError, match="init args"):
        parse_init_args(text)
