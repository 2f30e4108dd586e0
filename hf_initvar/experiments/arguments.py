"""Command-line options generated from an experiment's config dataclass, so the CLI and the examples agree.

Every field becomes `--field_name` with the field's default, and its help text is the field's
line in the class docstring's `Attributes:` section.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing


def add_dataclass_arguments(parser: argparse.ArgumentParser, config_class: type) -> None:
    """Add one `--name` option per field of `config_class`, with its default and documented help."""
    helps = _attribute_docs(config_class)
    hints = typing.get_type_hints(config_class)
    defaults = config_class()
    for field in dataclasses.fields(config_class):
        default = getattr(defaults, field.name)
        help_text = f"{helps.get(field.name, '')} (default: {default})"
        hint = hints[field.name]
        option = f"--{field.name}"
        if hint is bool:
            parser.add_argument(option, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        elif typing.get_origin(hint) is list:
            (item_type,) = typing.get_args(hint)
            parser.add_argument(option, type=item_type, nargs="+", default=default, help=help_text)
        else:
            value_type = next((t for t in typing.get_args(hint) if t is not type(None)), hint)
            parser.add_argument(option, type=value_type, default=default, help=help_text)


def dataclass_from_args(config_class: type, args: argparse.Namespace):
    """Build `config_class` from the parsed options `add_dataclass_arguments` added."""
    values = {field.name: getattr(args, field.name) for field in dataclasses.fields(config_class)}
    return config_class(**values)


def _attribute_docs(config_class: type) -> dict[str, str]:
    # Lines "name: text" under "Attributes:", with indented continuation lines joined.
    doc = config_class.__doc__ or ""
    section = doc.split("Attributes:", 1)[1] if "Attributes:" in doc else ""
    helps: dict[str, str] = {}
    current = None
    for line in section.splitlines():
        match = re.match(r"^\s{4,8}(\w+): (.*)$", line)
        if match:
            current = match.group(1)
            helps[current] = match.group(2).strip()
        elif current and line.strip():
            helps[current] += " " + line.strip()
    return helps
