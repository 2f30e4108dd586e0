"""Train many MLPs of one architecture at once, with their weights stacked along a leading model axis.

A sweep trains dozens of small MLPs that differ only in their initial weights and data order. One
at a time, each step is a handful of small matmuls and Python overhead dominates. Stacked, layer
`l` of all M models is one `[M, in, out]` tensor and a step is one `torch.bmm` per layer, large
enough that the matmul time, not Python, dominates.

A training step runs the backward pass by hand rather than through autograd
(`StackedMLP.train_step`). Measured with `benchmarks/mlp_sweep_speed.py` on 2 CPU cores, the bmms
took about 90% of an autograd step. The rest went to allocating gradient tensors and to the
optimizer's separate pass over them. By hand, the gradients of Adam's parameters go into buffers
reused every step, and SGD takes its step inside the weight-gradient matmul (`baddbmm_`), so no
gradient tensor is written at all.

The stacked run is the same computation as training each model alone: the summed loss has
gradient exactly the per-model gradient for each slice, SGD and Adam update element-wise, and each
model draws its own mini-batches from a generator seeded with its data seed. Only the summation
order inside the matmuls differs, so results agree to rounding (about 1e-15 in float64), and runs
whose dynamics are chaotic amplify that rounding the same way two float32 runs on different
hardware would.
"""

from __future__ import annotations

import difflib
import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from hf_initvar.models.mlp import ReluMLP

logger = logging.getLogger(__name__)

OPTIMIZERS = ("sgd", "adam")

_ACTIVATION_FUNCTIONS = {
    "relu": torch.relu,
    "gelu": nn.functional.gelu,
    "tanh": torch.tanh,
}

# Gradient with respect to an activation's input, from (output gradient, pre-activation, output).
# These are the aten kernels autograd runs for relu, gelu and tanh, so the hand-written backward
# pass computes the same values as autograd.
_ACTIVATION_BACKWARD = {
    "relu": lambda grad, pre_activation, output: torch.ops.aten.threshold_backward(grad, output, 0),
    "gelu": lambda grad, pre_activation, output: torch.ops.aten.gelu_backward(grad, pre_activation),
    "tanh": lambda grad, pre_activation, output: torch.ops.aten.tanh_backward(grad, output),
}
# The derivatives of relu and tanh need only the output, so `train_step` applies them in place and
# saves one allocation per layer (about 2% of a width-256 step). gelu's derivative needs the input.
_IN_PLACE_ACTIVATIONS = {"relu": torch.relu_, "tanh": torch.tanh_}


@dataclass
class TrainingSchedule:
    """How every model of a run is trained.

    Attributes:
        optimizer: `sgd` or `adam`.
        learning_rate: step size of the optimizer.
        epochs: passes over the training split.
        batch_size: samples per optimizer step; the last batch of an epoch may be smaller.
        momentum: SGD momentum (ignored by Adam).
    """

    optimizer: str = "sgd"
    learning_rate: float = 0.05
    epochs: int = 10
    batch_size: int = 64
    momentum: float = 0.0

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            close = difflib.get_close_matches(self.optimizer, OPTIMIZERS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"unknown optimizer {self.optimizer!r}; allowed: {list(OPTIMIZERS)}.{hint}")
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be positive, got {self.learning_rate}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be at least 1, got {self.epochs} and {self.batch_size}")

    def steps_per_epoch(self, num_samples: int) -> int:
        """Number of optimizer steps in one epoch over `num_samples` samples."""
        return math.ceil(num_samples / self.batch_size)

    def build_optimizer(self, parameters) -> torch.optim.Optimizer:
        """Return the torch optimizer this schedule names, over `parameters`.

        `train_one_model` uses it. `train_stacked` uses it for Adam, and `FusedSGD`, which applies
        the same update rule, for SGD.
        """
        if self.optimizer == "sgd":
            return torch.optim.SGD(parameters, lr=self.learning_rate, momentum=self.momentum)
        return torch.optim.Adam(parameters, lr=self.learning_rate)


class StackedMLP(nn.Module):
    """M MLPs of identical architecture whose layer `l` weights form one `[M, in, out]` parameter (the transpose of nn.Linear's layout).

    Args:
        models: the models to stack; their weights are copied, so the originals stay untouched.
        dtype: dtype of the stacked weights; float64 for equivalence checks.
    """

    def __init__(self, models: list[ReluMLP], dtype: torch.dtype = torch.float32):
        super().__init__()
        if not models:
            raise ValueError("StackedMLP needs at least one model, got an empty list")
        config = models[0].config
        for model in models[1:]:
            if model.config.layer_sizes != config.layer_sizes or model.config.bias != config.bias:
                raise ValueError(
                    f"all stacked models need one architecture; got layer sizes {config.layer_sizes} "
                    f"and {model.config.layer_sizes}"
                )
        self.config = config
        self.activation = _ACTIVATION_FUNCTIONS[config.activation]
        num_layers = len(models[0].layers)
        # weights[l]: (M, fan_in, fan_out), the transpose of nn.Linear's layout, so the forward bmm
        # reads it without a transposed view; measured here on 2 CPU cores that made a training
        # step about 30% faster than (M, fan_out, fan_in). biases[l]: (M, fan_out).
        self.weights = nn.ParameterList(
            nn.Parameter(torch.stack([m.layers[l].weight.detach().T for m in models]).to(dtype).contiguous())
            for l in range(num_layers)
        )
        self.biases = (
            nn.ParameterList(
                nn.Parameter(torch.stack([m.layers[l].bias.detach() for m in models]).to(dtype).clone())
                for l in range(num_layers)
            )
            if config.bias
            else None
        )

    @property
    def num_models(self) -> int:
        """Number of stacked models M."""
        return self.weights[0].shape[0]

    def forward(self, features: torch.Tensor, keep_pre_activations: bool = False):
        """Return logits `(M, B, classes)` for features `(M, B, in)`, and the pre-activations when asked."""
        hidden = features
        pre_activations = []
        last = len(self.weights) - 1
        for index, weight in enumerate(self.weights):
            if self.biases is not None:
                # (M, B, out) = bias (M, 1, out) + (M, B, in) @ (M, in, out)
                hidden = torch.baddbmm(self.biases[index].unsqueeze(1), hidden, weight)
            else:
                hidden = torch.bmm(hidden, weight)
            if keep_pre_activations:
                hidden.retain_grad()
                pre_activations.append(hidden)
            if index < last:
                hidden = self.activation(hidden)
        return (hidden, pre_activations) if keep_pre_activations else hidden

    def per_model_loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Return each model's mean cross-entropy, shape `(M,)`, for features `(M, B, in)` and labels `(M, B)`."""
        logits = self(features)
        num_models, batch, classes = logits.shape
        losses = nn.functional.cross_entropy(
            logits.reshape(num_models * batch, classes), labels.reshape(-1), reduction="none"
        )
        return losses.view(num_models, batch).mean(dim=1)

    @torch.no_grad()
    def train_step(self, features: torch.Tensor, labels: torch.Tensor, sgd: FusedSGD | None = None) -> torch.Tensor:
        """Run one forward and backward pass by hand and return each model's mean cross-entropy, shape `(M,)`.

        The gradient is that of the summed per-model losses, so each model's slice gets its own
        model's gradient. With `sgd`, every parameter takes its SGD step as soon as its gradient
        is known. The weight step is fused into the gradient matmul, so weights' `.grad` stay
        unset. Without `sgd`, the gradients overwrite `.grad` (no zeroing needed), in buffers that
        are reused from step to step, for a torch optimizer to apply.

        Args:
            features: inputs `(M, B, in)`.
            labels: class indices `(M, B)`.
            sgd: the update to fuse into the backward pass; None stores the gradients instead.
        """
        # Forward, keeping each layer's input and each hidden pre-activation for the backward pass.
        # With an in-place activation, a kept pre-activation is overwritten by the output, which is
        # all that activation's backward reads.
        activate = _IN_PLACE_ACTIVATIONS.get(self.config.activation, self.activation)
        layer_inputs = []
        pre_activations = []
        hidden = features
        last = len(self.weights) - 1
        for index, weight in enumerate(self.weights):
            layer_inputs.append(hidden)
            if self.biases is not None:
                hidden = torch.baddbmm(self.biases[index].unsqueeze(1), hidden, weight)
            else:
                hidden = torch.bmm(hidden, weight)
            if index < last:
                pre_activations.append(hidden)
                hidden = activate(hidden)

        # Mean cross-entropy per model. Its gradient with respect to the logits is
        # (softmax - one_hot(labels)) / batch.
        batch = labels.shape[1]
        log_probs = torch.log_softmax(hidden, dim=-1)
        label_index = labels.unsqueeze(-1)
        losses = -log_probs.gather(-1, label_index).squeeze(-1).mean(dim=1)
        grad = log_probs.exp_()
        grad.scatter_add_(-1, label_index, torch.full_like(label_index, -1, dtype=grad.dtype))
        grad.div_(batch)

        activation_backward = _ACTIVATION_BACKWARD[self.config.activation]
        for index in range(last, -1, -1):
            weight = self.weights[index]
            layer_input = layer_inputs[index]
            # The input gradient needs this layer's weight before its update.
            grad_input = torch.bmm(grad, weight.transpose(1, 2)) if index > 0 else None
            if sgd is not None:
                sgd.step_matmul(weight, layer_input.transpose(1, 2), grad)
            else:
                _store_gradient(weight, torch.bmm(layer_input.transpose(1, 2), grad, out=weight.grad))
            if self.biases is not None:
                bias_gradient = grad.sum(dim=1)
                if sgd is not None:
                    sgd.step(self.biases[index], bias_gradient)
                else:
                    _store_gradient(self.biases[index], bias_gradient)
            if index > 0:
                grad = activation_backward(grad_input, pre_activations[index - 1], layer_inputs[index])
        return losses

    def layer_weight(self, layer: int, index: int) -> torch.Tensor:
        """Return model `index`'s weight of `layer` as a `[fan_out, fan_in]` view, nn.Linear's layout."""
        return self.weights[layer][index].T

    @torch.no_grad()
    def copy_into(self, index: int, model: ReluMLP) -> ReluMLP:
        """Write model `index`'s weights into `model` (same architecture) and return it."""
        for l, layer in enumerate(model.layers):
            layer.weight.copy_(self.layer_weight(l, index))
            if self.biases is not None:
                layer.bias.copy_(self.biases[l][index])
        return model


class FusedSGD:
    """SGD with optional momentum whose weight step happens inside the weight-gradient matmul.

    The rule is `torch.optim.SGD`'s without dampening, Nesterov or weight decay:
    `buffer = momentum * buffer + gradient` (the first buffer is the gradient itself), then
    `parameter -= learning_rate * buffer`. Without momentum, `step_matmul` writes
    `parameter -= learning_rate * (left @ right)` with one `baddbmm_`, which on 2 CPU cores ran
    about 15% faster than the bmm alone that would only compute the gradient. With momentum, the
    buffer takes the matmul, `buffer = momentum * buffer + left @ right`, and the parameter one add.
    """

    def __init__(self, learning_rate: float, momentum: float = 0.0):
        self.learning_rate = learning_rate
        self.momentum = momentum
        self.buffers: dict[int, torch.Tensor] = {}

    def step_matmul(self, parameter: torch.Tensor, left: torch.Tensor, right: torch.Tensor) -> None:
        """Step `parameter` along the gradient `left @ right` (a batched matmul)."""
        if self.momentum == 0:
            parameter.baddbmm_(left, right, alpha=-self.learning_rate)
            return
        buffer = self.buffers.get(id(parameter))
        if buffer is None:
            buffer = self.buffers[id(parameter)] = torch.bmm(left, right)
        else:
            buffer.baddbmm_(left, right, beta=self.momentum)
        parameter.add_(buffer, alpha=-self.learning_rate)

    def step(self, parameter: torch.Tensor, gradient: torch.Tensor) -> None:
        """Step `parameter` along `gradient`."""
        if self.momentum == 0:
            parameter.add_(gradient, alpha=-self.learning_rate)
            return
        buffer = self.buffers.get(id(parameter))
        if buffer is None:
            buffer = self.buffers[id(parameter)] = gradient.clone()
        else:
            buffer.mul_(self.momentum).add_(gradient)
        parameter.add_(buffer, alpha=-self.learning_rate)


def _store_gradient(parameter: torch.Tensor, gradient: torch.Tensor) -> None:
    if parameter.grad is None:
        parameter.grad = gradient
    elif parameter.grad is not gradient:
        parameter.grad.copy_(gradient)


@dataclass
class StackedTrainingResult:
    """What a stacked training run returns.

    Attributes:
        losses: training loss of every model at every step, `(steps, M)` float64; NaN/inf kept as is.
        model: the stacked models after training.
    """

    losses: torch.Tensor
    model: StackedMLP


def train_stacked(
    stacked: StackedMLP,
    features: torch.Tensor,
    labels: torch.Tensor,
    data_seeds: list[int],
    schedule: TrainingSchedule,
    progress: bool = False,
    description: str = "training",
) -> StackedTrainingResult:
    """Train all stacked models at once; model m shuffles the data with a generator seeded by `data_seeds[m]`.

    Args:
        stacked: the models to train, updated in place.
        features: training features `(N, in)`, shared by all models.
        labels: training labels `(N,)`.
        data_seeds: one shuffle seed per model.
        schedule: optimizer, learning rate, epochs and batch size.
        progress: show a tqdm progress bar over steps.
        description: label of the progress bar.

    Returns:
        The per-step losses and the trained stack.
    """
    num_models = stacked.num_models
    if len(data_seeds) != num_models:
        raise ValueError(f"need one data seed per model: {num_models} models, {len(data_seeds)} seeds")
    features = features.to(stacked.weights[0].dtype)
    num_samples = features.shape[0]
    steps_per_epoch = schedule.steps_per_epoch(num_samples)
    total_steps = steps_per_epoch * schedule.epochs

    if schedule.optimizer == "sgd":
        sgd, optimizer = FusedSGD(schedule.learning_rate, schedule.momentum), None
    else:
        sgd, optimizer = None, schedule.build_optimizer(stacked.parameters())
    generators = [torch.Generator().manual_seed(int(seed)) for seed in data_seeds]
    losses = torch.empty(total_steps, num_models, dtype=torch.float64)

    bar = _progress_bar(total_steps, description) if progress else None
    step = 0
    for _ in range(schedule.epochs):
        # (M, N): each model's own permutation for this epoch
        order = torch.stack([torch.randperm(num_samples, generator=g) for g in generators])
        for start in range(0, num_samples, schedule.batch_size):
            batch_index = order[:, start : start + schedule.batch_size]  # (M, B)
            loss_per_model = stacked.train_step(features[batch_index], labels[batch_index], sgd)
            if optimizer is not None:
                optimizer.step()
            losses[step] = loss_per_model
            step += 1
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return StackedTrainingResult(losses=losses, model=stacked)


def train_one_model(
    model: ReluMLP,
    features: torch.Tensor,
    labels: torch.Tensor,
    data_seed: int,
    schedule: TrainingSchedule,
) -> torch.Tensor:
    """Train one model in a plain PyTorch loop with the data order `train_stacked` gives it.

    This is the one-at-a-time reference that the stacked run must reproduce, and the tight loop
    of the speed benchmark. Returns the per-step training loss, `(steps,)` float64.
    """
    features = features.to(next(model.parameters()).dtype)
    num_samples = features.shape[0]
    optimizer = schedule.build_optimizer(model.parameters())
    generator = torch.Generator().manual_seed(int(data_seed))
    losses = []
    for _ in range(schedule.epochs):
        order = torch.randperm(num_samples, generator=generator)
        for start in range(0, num_samples, schedule.batch_size):
            batch_index = order[start : start + schedule.batch_size]
            loss = model(features[batch_index], labels=labels[batch_index]).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
    return torch.stack(losses).double()


def init_statistics(stacked: StackedMLP, features: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Measure every layer's forward and backward variance at the current weights on one fixed batch.

    Args:
        stacked: the models, usually right after initialization.
        features: the fixed batch `(B, in)`, the same for every model.
        labels: its labels `(B,)`.

    Returns:
        `activation_variance`: variance of each layer's pre-activation over batch and units, `(M, L)`;
        `gradient_variance`: variance of the loss gradient with respect to each layer's weight, `(M, L)`;
        `input_second_moment`: mean of `features**2`, the scale the theory starts from (a 0-d tensor).
        All float64.
    """
    num_models = stacked.num_models
    batch = features.to(stacked.weights[0].dtype).unsqueeze(0).expand(num_models, -1, -1)
    stacked.zero_grad(set_to_none=True)
    logits, pre_activations = stacked(batch, keep_pre_activations=True)
    batch_size, classes = logits.shape[1], logits.shape[2]
    loss = nn.functional.cross_entropy(
        logits.reshape(-1, classes), labels.repeat(num_models), reduction="none"
    ).view(num_models, batch_size).mean(dim=1)
    loss.sum().backward()

    # float64: at the small end of a sweep the variances fall below float32's normal range (~1e-38).
    activation_variance = torch.stack(
        [z.detach().double().flatten(1).var(dim=1, unbiased=False) for z in pre_activations], dim=1
    )
    gradient_variance = torch.stack(
        [w.grad.double().flatten(1).var(dim=1, unbiased=False) for w in stacked.weights], dim=1
    )
    stacked.zero_grad(set_to_none=True)
    return {
        "activation_variance": activation_variance,
        "gradient_variance": gradient_variance,
        "input_second_moment": features.double().pow(2).mean(),
    }


@torch.no_grad()
def stacked_logits(stacked: StackedMLP, features: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """Return every model's logits `(M, N, classes)` on features `(N, in)`, in chunks of samples."""
    features = features.to(stacked.weights[0].dtype)
    parts = []
    for start in range(0, features.shape[0], chunk):
        part = features[start : start + chunk]
        parts.append(stacked(part.unsqueeze(0).expand(stacked.num_models, -1, -1)))
    return torch.cat(parts, dim=1)


def _progress_bar(total: int, description: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, unit="step", leave=False)
