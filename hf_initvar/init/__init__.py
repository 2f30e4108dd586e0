"""Initialization registry: schemes, parameter roles, and applying a scheme to a model.

```python
from transformers import GPT2Config, GPT2LMHeadModel
from hf_initvar.init import apply_init, intended_stds

model = GPT2LMHeadModel(GPT2Config(n_layer=4, n_embd=128, n_head=4))
apply_init(model, {"default": "gpt2", "qkv": ("xavier_normal", {})})
stds = intended_stds(model)  # read back from model.config.init_scheme
```
"""

from hf_initvar.init.apply import (
    apply_config_init,
    apply_init,
    draw_parameters,
    from_config,
    from_pretrained,
    intended_stds,
)
from hf_initvar.init.args import parse_init_args
from hf_initvar.init.roles import ROLES, ParamInfo, classify_parameters, model_family
from hf_initvar.init.rules import Rule
from hf_initvar.init.schemes import (
    PerRoleScheme,
    Scheme,
    get_scheme,
    list_schemes,
    register_scheme,
    resolve_scheme,
    standard_rule,
)

__all__ = [
    "ROLES",
    "ParamInfo",
    "PerRoleScheme",
    "Rule",
    "Scheme",
    "apply_config_init",
    "apply_init",
    "classify_parameters",
    "draw_parameters",
    "from_config",
    "from_pretrained",
    "get_scheme",
    "intended_stds",
    "list_schemes",
    "model_family",
    "parse_init_args",
    "register_scheme",
    "resolve_scheme",
    "standard_rule",
]
