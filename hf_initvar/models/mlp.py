"""A small multilayer perceptron for initialization experiments, as a Hugging Face `PreTrainedModel`.

`ReluMLP` maps a feature vector to class logits through `model.layers`, an `nn.ModuleList` of
`nn.Linear` whose last entry is the output (classifier) layer, with an activation between layers.
Being a `PreTrainedModel`, it trains with the `Trainer`, saves with `save_pretrained` and reloads
with `from_pretrained`. Its weights are drawn by the init scheme named in the config, once, on fresh
weights: reloaded weights are never re-drawn.
"""

from __future__ import annotations

import difflib
import logging

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from hf_initvar.init import classify_parameters, draw_parameters, resolve_scheme

logger = logging.getLogger(__name__)

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


class ReluMLPConfig(PreTrainedConfig):
    """Configuration of a `ReluMLP`.

    The hidden widths come from `hidden_sizes` when it is given, else from `hidden_size` repeated
    `num_hidden_layers` times. The number of classes is the standard `num_labels`.

    Attributes:
        input_size: number of input features.
        hidden_sizes: width of each hidden layer; overrides `hidden_size` x `num_hidden_layers`.
        hidden_size: width of every hidden layer when `hidden_sizes` is not given.
        num_hidden_layers: number of hidden layers when `hidden_sizes` is not given.
        activation: nonlinearity between layers, one of `relu`, `gelu`, `tanh`.
        bias: whether every linear layer has a bias (initialized to zero).
        init_scheme: init scheme (a name from `hf_initvar.init.list_schemes()` or a per-role
            spec) that draws fresh weights; the classifier is the role `classifier`, the hidden
            layers `hidden`, the biases `bias`.
        init_args: keyword arguments of the init scheme, e.g. `{"std": 0.05}` for `normal`.
    """

    model_type = "relu_mlp"

    input_size: int = 64
    hidden_sizes: list[int] | None = None
    hidden_size: int = 256
    num_hidden_layers: int = 6
    activation: str = "relu"
    bias: bool = False
    init_scheme: str | dict = "kaiming_normal"
    init_args: dict | None = None

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if self.hidden_sizes is None:
            self.hidden_sizes = [self.hidden_size] * self.num_hidden_layers
        self.hidden_sizes = [int(width) for width in self.hidden_sizes]
        self.num_hidden_layers = len(self.hidden_sizes)
        if self.init_args is None:
            self.init_args = {}
        self._validate()

    def _validate(self) -> None:
        if self.activation not in ACTIVATIONS:
            raise ValueError(
                f"invalid activation {self.activation!r}; allowed: {sorted(ACTIVATIONS)}"
                f"{_did_you_mean(self.activation, ACTIVATIONS)}"
            )
        if self.input_size < 1:
            raise ValueError(f"input_size must be at least 1, got {self.input_size}")
        if any(width < 1 for width in self.hidden_sizes):
            raise ValueError(f"every hidden width must be at least 1, got hidden_sizes={self.hidden_sizes}")
        # Raises ValueError naming the nearest known scheme or argument.
        resolve_scheme(self.init_scheme, **self.init_args)
        if self.num_labels < 2:
            raise ValueError(f"num_labels must be at least 2 for classification, got {self.num_labels}")

    @property
    def layer_sizes(self) -> list[int]:
        """Widths from input to output: `[input_size, *hidden_sizes, num_labels]`."""
        return [self.input_size, *self.hidden_sizes, self.num_labels]


class ReluMLP(PreTrainedModel):
    """Feed-forward classifier: `layers[0..L-1]` are hidden layers, `layers[-1]` the classifier.

    `forward(features, labels=None)` takes `features` of shape `(batch, input_size)` and returns a
    `SequenceClassifierOutput` whose `loss` is the mean cross-entropy when `labels` are given. With
    `output_hidden_states=True`, `hidden_states` contains each linear layer's output before the
    activation (the pre-activations), layer 0 first and the logits last.

    `VarianceCallback` tracks the weight of every entry of `layers` (projection `weight`, metric
    keys `mlp/variance/layer_03/weight`). Activation and gradient variances at initialization come
    from `hidden_states` and from `hf_initvar.experiments.batched.init_statistics`.
    """

    config_class = ReluMLPConfig
    base_model_prefix = "mlp"
    main_input_name = "features"

    def __init__(self, config: ReluMLPConfig):
        super().__init__(config)
        sizes = config.layer_sizes
        self.layers = nn.ModuleList(
            nn.Linear(fan_in, fan_out, bias=config.bias) for fan_in, fan_out in zip(sizes[:-1], sizes[1:])
        )
        self.activation = ACTIVATIONS[config.activation]()
        self.post_init()

    def forward(
        self,
        features: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        **kwargs,
    ) -> SequenceClassifierOutput:
        hidden = features
        pre_activations = []
        for index, layer in enumerate(self.layers):
            hidden = layer(hidden)
            pre_activations.append(hidden)
            if index < len(self.layers) - 1:
                hidden = self.activation(hidden)
        logits = hidden

        loss = None
        if labels is not None:
            loss = nn.functional.cross_entropy(logits, labels.long())
        return SequenceClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=tuple(pre_activations) if output_hidden_states else None,
        )

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        # transformers' `initialize_weights` calls this for each module that owns parameters (the
        # linears, not the model itself). The init registry draws the linear's fresh tensors with
        # the config's scheme and skips the ones `from_pretrained` loaded and flagged.
        if not isinstance(module, nn.Linear):
            return
        index = next(i for i, layer in enumerate(self.layers) if layer is module)
        infos = classify_parameters(self)
        own = {name: info for name, info in infos.items() if name.startswith(f"layers.{index}.")}
        scheme = resolve_scheme(self.config.init_scheme, **self.config.init_args)
        draw_parameters(self, scheme, own)


# `AutoConfig.from_pretrained` / `AutoModel.from_pretrained` then load a saved ReluMLP by its model_type.
AutoConfig.register(ReluMLPConfig.model_type, ReluMLPConfig)
AutoModel.register(ReluMLPConfig, ReluMLP)


def _did_you_mean(name: str, choices) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1)
    return f"; did you mean {close[0]!r}?" if close else ""
