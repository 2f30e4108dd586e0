import os

import pytest

# Nothing in the tests may reach the Hugging Face Hub or W&B servers.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture
def tiny_gpt2():
    """A 3-layer GPT-2 with non-trivial biases, built the way the Trainer receives it."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(n_layer=3, n_embd=24, n_head=3, n_positions=16, vocab_size=50, bos_token_id=0, eos_token_id=0)
    model = GPT2LMHeadModel(config)
    model.eval()
    return model


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module's tests with one intra-op thread.

    The MLP tests use tiny matmuls, and on a loaded machine a second thread mostly waits for a core,
    which measured here made each step about 10x slower.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
