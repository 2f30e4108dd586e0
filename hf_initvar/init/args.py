"""Parsing `--init_args` from a command line: JSON or `key=value[,key=value]`."""

from __future__ import annotations

import json
from typing import Any


def parse_init_args(text: str | None) -> dict[str, Any]:
    """Parse scheme arguments given as JSON or as comma-separated `key=value` pairs.

    Numbers become int or float, `true`/`false` become bool, `none`/`null` become None, anything
    else stays a string. An empty string gives `{}`.

    Examples:
        `'{"std": 0.02}'` -> `{"std": 0.02}`;
        `"mode=fan_out,nonlinearity=relu"` -> `{"mode": "fan_out", "nonlinearity": "relu"}`;
        `"std=1e-2"` -> `{"std": 0.01}`.

    Raises:
        ValueError: for invalid JSON, JSON that is not an object, or a pair without `=`.
    """
    text = (text or "").strip()
    if not text:
        return {}

    if text.startswith("{"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"invalid JSON in init args {text!r}: {error}") from error
        if not isinstance(parsed, dict):
            raise ValueError(f"init args JSON must be an object, got {type(parsed).__name__}: {text!r}")
        return parsed

    args: dict[str, Any] = {}
    for pair in text.split(","):
        key, separator, value = pair.partition("=")
        key = key.strip()
        if not separator or not key:
            raise ValueError(
                f"invalid init args {text!r}: {pair.strip()!r} is not key=value; "
                "write e.g. std=0.02,cutoff=3 or JSON '{\"std\": 0.02}'"
            )
        args[key] = _parse_value(value.strip())
    return args


def _parse_value(value: str) -> Any:
    lowered = value.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    for convert in (int, float):
        try:
            return convert(value)
        except ValueError:
            pass
    return value
