"""Exact Q/K/V moments from sharded parameters, merged with one collective per logged step.

Every supported sharding hands a rank one contiguous range of a weight's row-major flat index:

- FSDP2 (`fully_shard`): a DTensor whose local tensor is a block of whole rows (dim-0 chunk).
- FSDP1 (`FullyShardedDataParallel`, with or without `use_orig_params`): the slice of the
  unit's padded flat parameter that `_shard_param_infos` assigns to the weight.
- DeepSpeed ZeRO-3: `param.ds_tensor`, this rank's `ds_numel`-long partition of the flattened
  weight, padded at the end of the last partition.

`ShardPlan` splits that range into rectangles of the `[rows, cols]` weight, and each rectangle into
pieces that lie within one projection and a run of heads (a head cut by a shard boundary becomes a
piece of its own). At a logged step each piece is reduced in place, through an `as_strided` view
of the local shard, to partial moments. The pieces are merged into this rank's rows, and one
`all_gather` of that `(rows, 3)` table merges all ranks exactly. No rank gathers a weight.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from hf_initvar.tracking.layouts import AttentionLayout, ProjectionPlacement
from hf_initvar.tracking.stats import FeatureSums, row_keys

logger = logging.getLogger(__name__)

SHARDINGS = ("none", "fsdp2", "fsdp1", "zero3")
QUANTITIES = ("weight", "gradient", "update")


@dataclass(frozen=True)
class LocalRange:
    """This rank's share of one weight: `flat[i]` is element `start + i` of the flattened weight."""

    flat: torch.Tensor
    start: int
    shape: tuple[int, int]


@dataclass(frozen=True)
class Piece:
    """One reduction: an `as_strided` view of a local flat tensor, with the rows it feeds.

    `size` is `(heads, a, b)`; the first `projection_row` receives the moments of the whole piece
    and, when per-head rows are kept, `head_rows` receive one row per head.
    """

    placement_index: int
    offset: int
    size: tuple[int, int, int]
    stride: tuple[int, int, int]
    projection_row: int
    head_rows: tuple[int, ...]


class ShardPlan:
    """Partial moments of every (layer, projection[, head]) row, exact under the sharding in use.

    Args:
        model: the model the Trainer passes to callbacks.
        layout: its attention layout.
        per_head: keep one row per head after each projection's row.

    Attributes:
        sharding: one of `SHARDINGS`, detected from the Q/K/V weights.
        keys: `(layer, projection, head)` of every row, head -1 for the whole projection.
    """

    def __init__(self, model: nn.Module, layout: AttentionLayout, per_head: bool):
        self.layout = layout
        self.per_head = per_head
        self.keys = row_keys(layout, per_head)
        self._fsdp1_index = _fsdp1_parameter_index(model)
        self.sharding = _detect_sharding(layout, self._fsdp1_index)
        self.world_size = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        self.rank = dist.get_rank() if self.world_size > 1 else 0
        # Without sharding every rank has the full weights (DDP), so world rank 0 alone computes.
        self.collective = self.sharding != "none" and self.world_size > 1
        self._pieces: list[Piece] = []
        self._targets: torch.Tensor | None = None
        self._device = torch.device("cpu")
        self._outputs: dict[str, torch.Tensor] = {}
        self._feature_sums: FeatureSums | None = None
        self._previous: dict[tuple[int, str], torch.Tensor] | None = None
        if self.sharding != "none":
            self._plan_pieces()

    def describe(self) -> str:
        """Return one phrase for the start-of-training log line."""
        if self.sharding == "none":
            return "unsharded weights (DDP or a single process): computed on rank 0, no collective"
        return f"{self.sharding} shards on {self.world_size} ranks: merged exactly with one all_gather per logged step"

    def compute(self, computes_here: bool, quantity: str = "weight") -> torch.Tensor | None:
        # On CPU the reductions run on one intra-op thread: for Q/K/V weights of a few hundred
        # thousand elements the thread pool costs more than it saves. Measured with torch 2.13 on
        # a 2-core VM, the 12 c_attn weights of a width-256 GPT-2 took 12 ms on one thread and
        # 295 ms on two. GPU work is unaffected.
        threads = torch.get_num_threads()
        if threads > 1 and self._on_cpu():
            torch.set_num_threads(1)
        try:
            return self._compute(computes_here, quantity)
        finally:
            torch.set_num_threads(threads)

    def _on_cpu(self) -> bool:
        if self.sharding == "none":
            return self._device_of_weights().type == "cpu"
        return self._device.type == "cpu"

    @torch.no_grad()
    def _compute(self, computes_here: bool, quantity: str) -> torch.Tensor | None:
        """Return the merged `(rows, 3)` float64 moments `(count, mean, m2)`, on the weights' device.

        Every rank must call this at the same steps when `self.collective` is true. Without a
        collective, ranks other than the one passing `computes_here=True` return None at no cost.

        Args:
            computes_here: whether this rank needs the result (world rank 0, or every rank).
            quantity: `weight`; `gradient`, the `.grad` of each weight (rows of a weight without
                a gradient get count 0 and NaN statistics); or `update`, the change of each weight
                since the previous `update` call. The first `update` call stores a copy of the
                weights (or of this rank's shards) and returns None.
        """
        if quantity not in QUANTITIES:
            raise ValueError(f"quantity must be one of {QUANTITIES}, got {quantity!r}")
        if self.sharding == "none":
            if not computes_here:
                return None
            if self._feature_sums is None:
                self._feature_sums = FeatureSums(self.layout, self.per_head)
            tensor_of = self._unsharded_tensors(quantity)
            if tensor_of is None:
                return None
            if quantity not in self._outputs:
                self._outputs[quantity] = torch.empty((len(self.keys), 3), dtype=torch.float64, device=self._device_of_weights())
            return self._feature_sums.compute(self._outputs[quantity], tensor_of)

        ranges = self._local_ranges(quantity)
        if ranges is None:
            return None
        local = reduce_pieces(self._pieces, self._targets, ranges, self.per_head, len(self.keys), self._device)
        if not self.collective:
            return local if computes_here else None
        gathered = [torch.empty_like(local) for _ in range(self.world_size)]
        dist.all_gather(gathered, local)
        rows = len(self.keys)
        targets = torch.arange(rows, device=local.device).repeat(self.world_size)
        return merge_rows(torch.cat(gathered), targets, rows)

    def _device_of_weights(self) -> torch.device:
        return self.layout.placements[0].weight().device

    def _unsharded_tensors(self, quantity: str) -> Callable[[ProjectionPlacement], torch.Tensor] | None:
        """Return a function giving each placement's full tensor of `quantity`, or None for a first update."""
        if quantity == "weight":
            return lambda placement: placement.weight()
        if quantity == "gradient":
            return lambda placement: _gradient_or_nan(placement.weight())
        current = {_weight_key(placement): placement.weight().detach() for placement in self.layout.placements}
        previous, self._previous = self._previous, {key: tensor.clone() for key, tensor in current.items()}
        if previous is None:
            return None
        changes = {key: current[key] - previous[key] for key in current}
        return lambda placement: changes[_weight_key(placement)]

    def _local_ranges(self, quantity: str) -> list[LocalRange | None] | None:
        """Return this rank's share of every placement's `quantity`, or None for a first update."""
        if quantity != "update":
            return [self._local_range(placement, gradient=quantity == "gradient") for placement in self.layout.placements]
        ranges = [self._local_range(placement) for placement in self.layout.placements]
        current = {}
        for placement, local in zip(self.layout.placements, ranges):
            if local is not None:
                current.setdefault(_weight_key(placement), local.flat)
        previous, self._previous = self._previous, {key: flat.clone() for key, flat in current.items()}
        if previous is None:
            return None
        changes = {key: current[key] - previous[key] for key in current}
        return [
            None if local is None else LocalRange(changes[_weight_key(placement)], local.start, local.shape)
            for placement, local in zip(self.layout.placements, ranges)
        ]

    def _local_range(self, placement: ProjectionPlacement, gradient: bool = False) -> LocalRange | None:
        """Return this rank's share of `placement`'s weight (or gradient), or None when it has nothing to count."""
        key = _weight_key(placement)
        if key in self._fsdp1_index:
            return _fsdp1_local_range(*self._fsdp1_index[key], gradient=gradient)
        parameter = placement.weight()
        if _is_dtensor(parameter):
            tensor = parameter.grad if gradient else parameter
            return None if tensor is None else _dtensor_local_range(tensor)
        if hasattr(parameter, "ds_tensor"):
            if gradient:
                raise ValueError("gradient statistics are not available under DeepSpeed ZeRO-3, whose gradients live in optimizer partitions")
            return _zero3_local_range(parameter)
        # A weight left whole inside a sharded model (ZeRO-3 persistent, FSDP-ignored): every
        # rank has the same copy, so only rank 0 counts it.
        tensor = parameter.grad if gradient else parameter
        if self.rank != 0 or tensor is None:
            return None
        return LocalRange(tensor.detach().reshape(-1), 0, tuple(parameter.shape))

    def _plan_pieces(self) -> None:
        ranges = [self._local_range(placement) for placement in self.layout.placements]
        self._pieces, self._targets = plan_pieces(self.layout, self.keys, self.per_head, ranges)
        self._device = next((r.flat.device for r in ranges if r is not None), self._device)


def plan_pieces(
    layout: AttentionLayout, keys: list[tuple[int, str, int]], per_head: bool, ranges: list[LocalRange | None]
) -> tuple[list[Piece], torch.Tensor]:
    """Cut each placement's local range into pieces; return them and the row each piece row feeds.

    `ranges[i]` is this rank's share of `layout.placements[i]`'s weight, None when it holds none.
    """
    rows_of = _projection_rows(keys)
    pieces: list[Piece] = []
    targets: list[int] = []
    for index, (placement, local) in enumerate(zip(layout.placements, ranges)):
        if local is None or local.flat.numel() == 0:
            continue
        if local.flat.dim() != 1 or local.flat.stride(0) != 1:
            raise ValueError(f"{placement.name}: the local shard is not a contiguous flat tensor (shape {tuple(local.flat.shape)})")
        projection_row = rows_of[(placement.layer, placement.projection)]
        for piece in _pieces_of(index, placement, local, projection_row, per_head):
            pieces.append(piece)
            targets.append(piece.projection_row)
            targets.extend(piece.head_rows)
    return pieces, torch.tensor(targets, dtype=torch.long)


def reduce_pieces(
    pieces: list[Piece], targets: torch.Tensor, ranges: list[LocalRange | None], per_head: bool, n_rows: int, device: torch.device
) -> torch.Tensor:
    """Reduce every piece in place and merge the results into `(n_rows, 3)` local moments."""
    out = torch.zeros((len(targets), 3), dtype=torch.float64, device=device)
    row = 0
    for piece in pieces:
        local = ranges[piece.placement_index]
        if local is None:  # a weight without a gradient: its rows keep count 0
            row += 1 + (piece.size[0] if per_head else 0)
            continue
        flat = local.flat
        view = flat.as_strided(piece.size, piece.stride, flat.storage_offset() + piece.offset)
        variance, mean = torch.var_mean(view, correction=0)
        out[row, 0] = view.numel()
        out[row, 1] = mean
        out[row, 2] = variance.double() * view.numel()
        row += 1
        if per_head:
            heads = piece.size[0]
            per_head_count = piece.size[1] * piece.size[2]
            head_variance, head_mean = torch.var_mean(view, dim=(1, 2), correction=0)
            out[row : row + heads, 0] = per_head_count
            out[row : row + heads, 1] = head_mean
            out[row : row + heads, 2] = head_variance.double() * per_head_count
            row += heads
    return merge_rows(out, targets.to(device), n_rows)


def merge_rows(moments: torch.Tensor, targets: torch.Tensor, n_rows: int) -> torch.Tensor:
    """Merge partial moments `(n, 3)` into `n_rows` rows; row `targets[i]` receives `moments[i]`.

    Uses the pairwise-update identity of Chan et al. (1979) for many parts at once:
    `M2 = sum(m2_i + n_i * (mean_i - mean)^2)` with `mean = sum(n_i * mean_i) / sum(n_i)`. Rows
    that receive nothing get count 0, mean 0, m2 0.
    """
    dtype, device = torch.float64, moments.device
    count = torch.zeros(n_rows, dtype=dtype, device=device).index_add_(0, targets, moments[:, 0])
    total = torch.zeros(n_rows, dtype=dtype, device=device).index_add_(0, targets, moments[:, 0] * moments[:, 1])
    mean = total / count.clamp_min(1)
    spread = moments[:, 2] + moments[:, 0] * (moments[:, 1] - mean[targets]) ** 2
    m2 = torch.zeros(n_rows, dtype=dtype, device=device).index_add_(0, targets, spread)
    return torch.stack([count, mean, m2], dim=1)


def _projection_rows(keys: list[tuple[int, str, int]]) -> dict[tuple[int, str], int]:
    return {(layer, projection): row for row, (layer, projection, head) in enumerate(keys) if head < 0}


def _rectangles(start: int, end: int, columns: int) -> list[tuple[int, int, int, int, int]]:
    """Split the flat range `[start, end)` of a `[rows, columns]` weight into rectangles.

    Returns `(offset, row, n_rows, col, n_cols)` tuples, `offset` relative to `start`: a partial
    first row, a block of whole rows, a partial last row (each only when present).
    """
    rectangles = []
    position = start
    if position % columns and position < end:
        row, col = divmod(position, columns)
        stop = min(end, (row + 1) * columns)
        rectangles.append((position - start, row, 1, col, stop - position))
        position = stop
    whole_rows = (end - position) // columns
    if whole_rows:
        rectangles.append((position - start, position // columns, whole_rows, 0, columns))
        position += whole_rows * columns
    if position < end:
        rectangles.append((position - start, position // columns, 1, 0, end - position))
    return rectangles


def _pieces_of(index: int, placement: ProjectionPlacement, local: LocalRange, projection_row: int, per_head: bool) -> list[Piece]:
    """Cut this rank's range of one weight into pieces of `placement`, each inside a run of heads."""
    rows, columns = local.shape
    end = local.start + local.flat.numel()
    pieces = []
    for offset, row0, n_rows, col0, n_cols in _rectangles(local.start, end, columns):
        # Along the feature axis the rectangle covers [first, last); the other axis is uncut.
        first, last = (row0, row0 + n_rows) if placement.feature_axis == 0 else (col0, col0 + n_cols)
        spans = []  # (head, feature start, feature stop) of every head the rectangle touches
        for head in range(placement.n_heads):
            head_start = placement.offset + head * placement.head_stride
            lo, hi = max(first, head_start), min(last, head_start + placement.head_dim)
            if lo < hi:
                spans.append((head, lo, hi, hi - lo == placement.head_dim))
        # Runs of whole heads become one piece; cut heads become pieces of their own.
        runs: list[list[tuple[int, int, int, bool]]] = []
        for span in spans:
            if span[3] and runs and runs[-1][-1][3] and runs[-1][-1][0] == span[0] - 1:
                runs[-1].append(span)
            else:
                runs.append([span])
        for run in runs:
            head, lo, hi, _ = run[0]
            width = hi - lo
            if placement.feature_axis == 0:
                # features are rows: element (r, c) of the rectangle sits at offset + (r - row0) * columns + c
                size = (len(run), width, n_cols)
                stride = (placement.head_stride * columns, columns, 1)
                piece_offset = offset + (lo - row0) * columns
            else:
                size = (len(run), n_rows, width)
                stride = (placement.head_stride, columns, 1)
                piece_offset = offset + (lo - col0)
            head_rows = tuple(projection_row + 1 + span[0] for span in run) if per_head else ()
            pieces.append(Piece(index, piece_offset, size, stride, projection_row, head_rows))
    return pieces


def _weight_key(placement: ProjectionPlacement) -> tuple[int, str]:
    return (id(placement.module), placement.parameter_name)


def _gradient_or_nan(parameter: torch.Tensor) -> torch.Tensor:
    """Return the parameter's gradient, or NaNs of its shape when it has none."""
    return parameter.grad if parameter.grad is not None else torch.full_like(parameter, float("nan"))


def _is_dtensor(tensor: torch.Tensor) -> bool:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed support
        return False
    return isinstance(tensor, DTensor)


def _detect_sharding(layout: AttentionLayout, fsdp1_index: dict) -> str:
    for placement in layout.placements:
        if (id(placement.module), placement.parameter_name) in fsdp1_index:
            return "fsdp1"
        parameter = placement.weight()
        if _is_dtensor(parameter):
            return "fsdp2"
        if hasattr(parameter, "ds_tensor"):
            return "zero3"
    return "none"


def _dtensor_local_range(parameter: torch.Tensor) -> LocalRange | None:
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    shape = tuple(parameter.shape)
    mesh = parameter.device_mesh
    coordinate = mesh.get_coordinate()
    for dim, placement in enumerate(parameter.placements):
        if isinstance(placement, Replicate):
            # HSDP: replicas along this mesh dim hold the same rows; only the first one counts.
            if coordinate is None or coordinate[dim] != 0:
                return None
        elif not (isinstance(placement, Shard) and placement.dim == 0):
            raise ValueError(f"DTensor weight of shape {shape} has placement {placement}; only Shard(0) and Replicate are supported")
    local_shape, global_offset = compute_local_shape_and_global_offset(shape, mesh, parameter.placements)
    local = parameter.to_local().detach()
    if local.numel() == 0:
        return None
    return LocalRange(local.reshape(-1), global_offset[0] * shape[1], shape)


def _zero3_local_range(parameter: torch.Tensor) -> LocalRange | None:
    shape = tuple(parameter.ds_shape)
    numel = math.prod(shape)
    if parameter.data.numel() == numel:  # persistent (small) parameter: whole on every rank
        if dist.get_rank() != 0:
            return None
        return LocalRange(parameter.data.reshape(-1), 0, shape)
    partition = parameter.ds_tensor
    partition_numel = partition.ds_numel if hasattr(partition, "ds_numel") else partition.numel()
    rank = dist.get_rank(group=getattr(parameter, "ds_process_group", None))
    start = rank * partition_numel
    length = max(0, min(partition_numel, numel - start))  # the last partition ends in padding
    if length == 0:
        return None
    return LocalRange(partition.detach().reshape(-1).narrow(0, 0, length), start, shape)


def _fsdp1_parameter_index(model: nn.Module) -> dict[tuple[int, str], tuple[object, int]]:
    """Map `(id(module), parameter name)` to `(flat parameter handle, index)` for FSDP1-wrapped weights."""
    try:
        from torch.distributed.fsdp import FullyShardedDataParallel
    except ImportError:
        return {}
    index = {}
    for fsdp_module in FullyShardedDataParallel.fsdp_modules(model):
        handle = getattr(fsdp_module, "_handle", None)
        if handle is None:
            continue
        flat_parameter = handle.flat_param
        for position, info in enumerate(flat_parameter._param_infos):
            index[(id(info.module), info.param_name)] = (handle, position)
    return index


def _fsdp1_local_range(handle, position: int, gradient: bool = False) -> LocalRange | None:
    flat_parameter = handle.flat_param
    shape = tuple(flat_parameter._shapes[position])
    if len(shape) != 2:
        raise ValueError(f"FSDP1 weight {flat_parameter._fqns[position]} has shape {shape}; a 2-D weight is expected")
    info = flat_parameter._shard_param_infos[position]
    # NO_SHARD keeps the whole flat parameter on every rank, so only rank 0 counts it.
    # NOTE: HYBRID_SHARD replicas would each count their shard, over-counting by the replica number.
    if not handle.uses_sharded_strategy and dist.is_initialized() and dist.get_rank() != 0:
        return None
    if not info.in_shard:
        return None
    # `_local_shard` is this rank's padded shard; `data` points at it outside forward/backward.
    local_shard = getattr(flat_parameter, "_local_shard", flat_parameter)
    if gradient:
        # After backward, a sharded flat parameter's gradient has the shape of its local shard.
        local_shard = flat_parameter.grad
        if local_shard is None:
            return None
    flat = local_shard.detach().narrow(0, info.offset_in_shard, info.numel_in_shard)
    return LocalRange(flat, info.intra_param_start_idx, shape)


def moments_on_host(moments: torch.Tensor) -> np.ndarray:
    """Copy merged moments to the host: the one device synchronization of a logged step."""
    return moments.cpu().numpy()
