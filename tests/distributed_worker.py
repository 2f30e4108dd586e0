"""Worker for the 2-process tests: trains small models under one sharding and records weights.

Run as `torchrun --nproc_per_node 2 distributed_worker.py MODE OUTPUT_DIR`. MODE is one of:

- `fsdp2`: `fully_shard` per layer and root; drives the callback's events directly, because the
  Trainer does not apply FSDP on a machine without GPUs.
- `fsdp1`, `fsdp1_orig`: `FullyShardedDataParallel` per layer, without and with `use_orig_params`.
- `ddp`: the real `Trainer` under DDP (gloo, `use_cpu=True`).
- `zero3`: the real `Trainer` under DeepSpeed ZeRO-3 with every parameter partitioned.

For the manually sharded modes, world rank 0 saves the full state dict of every model at every
logged step as `OUTPUT_DIR/<family>/weights_step_<step>.pt`, so the test can recompute the
statistics in one process. The Trainer modes save the final weights only.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    GPTNeoXConfig,
    GPTNeoXForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    TrainerControl,
    TrainerState,
    TrainingArguments,
)

from hf_initvar import VarianceCallback

STEPS = 3
# Sizes chosen so that shard boundaries cut heads and dim-0 chunks are uneven across 2 ranks.
FAMILIES = {
    "gpt2": lambda: GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=21, n_head=3, n_positions=16, vocab_size=50)),
    "gpt_neox": lambda: GPTNeoXForCausalLM(
        GPTNeoXConfig(num_hidden_layers=2, hidden_size=21, num_attention_heads=3, intermediate_size=32, vocab_size=50)
    ),
    "mistral": lambda: MistralForCausalLM(
        MistralConfig(num_hidden_layers=2, hidden_size=18, num_attention_heads=3, num_key_value_heads=1, intermediate_size=32, vocab_size=50)
    ),
}


def build(family: str):
    torch.manual_seed(0)
    return FAMILIES[family]()


def layer_modules(model):
    base = model.base_model
    return list(base.h) if hasattr(base, "h") else list(base.layers)


def shard(model, mode: str):
    """Shard `model` in place (FSDP2) or wrap it (FSDP1); return the module to train."""
    if mode == "fsdp2":
        from torch.distributed.fsdp import fully_shard
        from torch.distributed.tensor import DTensor

        for layer in layer_modules(model):
            fully_shard(layer)
        fully_shard(model)
        weight = model.get_parameter(next(name for name, _ in model.named_parameters() if "attn" in name or "attention" in name))
        assert isinstance(weight, DTensor), f"fully_shard left {type(weight).__name__}"
        assert weight.to_local().numel() < weight.numel(), "fully_shard did not shard the weight"
        return model

    from torch.distributed.fsdp import FullyShardedDataParallel
    from torch.distributed.fsdp.wrap import ModuleWrapPolicy

    # One flat parameter per attention module puts a shard boundary inside the fused Q/K/V weight
    # (mid-row for GPT-2, inside head 2 for GPT-NeoX). Mistral's attention splits between k and v,
    # so there each Linear gets its own flat parameter, which cuts head 1 of q in two.
    layer = layer_modules(model)[0]
    if model.config.model_type == "mistral":
        wrapped_classes = {torch.nn.Linear}
    else:
        wrapped_classes = {type(layer.attn if hasattr(layer, "attn") else layer.attention)}
    wrapped = FullyShardedDataParallel(
        model, auto_wrap_policy=ModuleWrapPolicy(wrapped_classes), use_orig_params=mode == "fsdp1_orig", device_id=torch.device("cpu")
    )
    flat = FullyShardedDataParallel.fsdp_modules(model)[0]._handle.flat_param
    assert flat.dim() == 1, "FSDP1 did not flatten the unit's parameters"
    assert flat.numel() < flat._unpadded_unsharded_size.numel(), "FSDP1 did not shard"
    return wrapped


def full_state_dict(model, trained) -> dict[str, torch.Tensor]:
    """Gather the full weights on every rank, named as in the unwrapped model."""
    if isinstance(trained, torch.distributed.fsdp.FullyShardedDataParallel):
        with torch.distributed.fsdp.FullyShardedDataParallel.summon_full_params(trained, writeback=False):
            return {
                name.replace("_fsdp_wrapped_module.", ""): parameter.detach().clone()
                for name, parameter in trained.named_parameters()
            }
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(trained, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def run_sharded(mode: str, output_dir: Path) -> None:
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for family in FAMILIES:
        model = build(family)
        trained = shard(model, mode)
        optimizer = torch.optim.AdamW(trained.parameters(), lr=1e-2)
        directory = output_dir / family
        args = TrainingArguments(output_dir=str(directory), use_cpu=True, report_to="none")
        state, control = TrainerState(), TrainerControl()
        state.is_world_process_zero = rank == 0
        callback = VarianceCallback(per_head=True, figures=False, track_gradients=True, track_updates=True)

        def record(step):
            weights = full_state_dict(model, trained)
            if rank == 0:
                torch.save(weights, directory / f"weights_step_{step}.pt")

        callback.on_train_begin(args, state, control, model=model)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / f"sharding_rank{rank}.txt").write_text(callback._plan.sharding)
        record(0)
        generator = torch.Generator().manual_seed(rank)
        for step in range(1, STEPS + 1):
            ids = torch.randint(0, 50, (2, 8), generator=generator)
            trained(input_ids=ids, labels=ids).loss.backward()
            callback.on_pre_optimizer_step(args, state, control, model=model)
            optimizer.step()
            optimizer.zero_grad()
            state.global_step = step
            callback.on_step_end(args, state, control, model=model)
            record(step)
        callback.on_train_end(args, state, control, model=model)
    dist.destroy_process_group()


def run_trainer(mode: str, output_dir: Path) -> None:
    from datasets import Dataset
    from transformers import Trainer

    model = build("gpt2")
    ids = torch.randint(0, 50, (32, 8), generator=torch.Generator().manual_seed(0)).tolist()
    extra = {}
    if mode == "zero3":
        extra["deepspeed"] = {
            "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
            "train_micro_batch_size_per_gpu": "auto",
            "train_batch_size": "auto",
            "gradient_accumulation_steps": "auto",
        }
    args = TrainingArguments(
        output_dir=str(output_dir / "gpt2"), max_steps=STEPS, per_device_train_batch_size=2, learning_rate=1e-2,
        save_strategy="no", report_to="none", use_cpu=True, disable_tqdm=True, seed=0, **extra,
    )  # fmt: skip
    callback = VarianceCallback(per_head=True, figures=False)
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_dict({"input_ids": ids, "labels": ids}), callbacks=[callback])
    trainer.train()
    if mode == "zero3":
        import deepspeed

        weight = model.transformer.h[0].attn.c_attn.weight
        assert weight.data.numel() == 0, "ZeRO-3 left the full weight in param.data"
        assert weight.ds_tensor.numel() < weight.ds_numel, "ZeRO-3 did not partition the weight"
        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    else:
        assert trainer.args.world_size == 2, "the Trainer did not see 2 processes"
        assert dist.get_world_size() == 2, "DDP did not start 2 processes"
        weights = {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}
    with open(output_dir / "gpt2" / f"sharding_rank{dist.get_rank()}.txt", "w") as handle:
        handle.write(callback._plan.sharding)
    if dist.get_rank() == 0:
        torch.save(weights, output_dir / "gpt2" / f"weights_step_{STEPS}.pt")


if __name__ == "__main__":
    mode, output = sys.argv[1], Path(sys.argv[2])
    os.environ.setdefault("WANDB_MODE", "offline")
    if mode in ("ddp", "zero3"):
        run_trainer(mode, output)
    else:
        run_sharded(mode, output)
    # On a loaded 2-core machine, about one fsdp2 run in five aborted after the script had finished
    # ("terminate called without an active exception", no Python frame left, torch 2.13 with gloo).
    # Every result is on disk by now, so the worker exits without running interpreter teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
