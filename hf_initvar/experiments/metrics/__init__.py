"""`evaluate` metric modules shipped with the package, loaded by path so no Hub access is needed."""

from __future__ import annotations

import difflib
from functools import lru_cache
from pathlib import Path

METRICS_DIR = Path(__file__).parent
SHIPPED_METRICS = ("accuracy", "cross_entropy")


@lru_cache(maxsize=None)
def load_metric(name: str):
    """Load a shipped metric module by name (`accuracy` or `cross_entropy`) with `evaluate.load(path)`."""
    import evaluate

    if name not in SHIPPED_METRICS:
        close = difflib.get_close_matches(name, SHIPPED_METRICS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown metric {name!r}{hint}; shipped metrics: {list(SHIPPED_METRICS)}")
    return evaluate.load(str(METRICS_DIR / name / f"{name}.py"))
