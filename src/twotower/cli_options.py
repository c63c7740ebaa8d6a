"""Command-line flags generated from the `TrainConfig` dataclasses: every setting is a flag
`--section.key` whose help text comes from the dataclass docstring and shows the default."""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from typing import Any

from twotower.config import NESTED, TrainConfig

# Settings whose owner documents them together; spelled out here for --help.
EXTRA_HELP = {
    "format": 'file format: "auto" (from the name and content), "csv", "tsv", "parquet", "ml-100k" (u.data), '
    '"ml-1m" (ratings.dat, "::"), "ml-latest" (ratings.csv) or "adjacency" ("user item item ...")',
    "columns": "role=column pairs, roles user, item, rating, label, timestamp (column names or 0-based indices)",
    "names": "column names for a file without a header row",
    "delimiter": "field separator (default: from the format)",
    "header": "whether the first row names the columns (default: detect)",
    "strict": "raise on the first malformed row (file and line named) instead of skipping and counting it",
}
# Model settings the trainer takes from [loss] instead (one temperature for training and the saved model).
HIDDEN = {"model.temperature", "model.learn_temperature", "model.min_temperature"}

_ATTR_LINE = re.compile(r"^\s{8}([A-Za-z_][\w /,]*):\s?(.*)$")


def attribute_help(cls: type) -> dict[str, str]:
    """Field name -> help text, from the "Attributes:" section of a Google-style docstring."""
    doc = cls.__doc__ or ""
    if "Attributes:" not in doc:
        return {}
    helps: dict[str, str] = {}
    current: list[str] = []
    for line in doc.split("Attributes:", 1)[1].splitlines():
        match = _ATTR_LINE.match(line)
        if match:
            current = [n.strip() for n in re.split(r"[/,]", match.group(1)) if n.strip()]
            for name in current:
                helps[name] = match.group(2).strip()
        elif line.strip() and current and line.startswith(" " * 12):
            for name in current:
                helps[name] += " " + line.strip()
        elif line.strip() and not line.startswith(" " * 8):
            break
    return helps


def _scalar(text: str) -> Any:
    lowered = text.lower()
    if lowered in ("none", "null"):
        return None
    if lowered in ("true", "yes", "on"):
        return True
    if lowered in ("false", "no", "off"):
        return False
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _is_sequence(annotation: Any) -> bool:
    origins = {typing.get_origin(a) for a in (annotation, *typing.get_args(annotation))}
    return bool(origins & {list, tuple})


def _is_mapping(annotation: Any) -> bool:
    origins = {typing.get_origin(a) for a in (annotation, *typing.get_args(annotation))}
    return dict in origins


def _is_bool(annotation: Any) -> bool:
    return annotation is bool


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """Adds one flag per setting of TrainConfig, grouped by section."""
    defaults = TrainConfig()

    def walk(cls: type, default: Any, prefix: str, group: argparse._ArgumentGroup) -> None:
        hints = typing.get_type_hints(cls)
        helps = attribute_help(cls)
        for f in dataclasses.fields(cls):
            nested = NESTED.get(cls, {}).get(f.name)
            value = getattr(default, f.name)
            dest = f"{prefix}{f.name}"
            if nested is not None:
                walk(nested, value, dest + ".", group)
                continue
            if dest in HIDDEN:
                continue
            text = EXTRA_HELP.get(f.name, helps.get(f.name, "")) if cls.__name__ == "DataConfig" else helps.get(f.name, "")
            annotation = hints[f.name]
            kwargs: dict[str, Any] = {"dest": dest, "default": argparse.SUPPRESS, "help": f"{text} (default: {value!r})"}
            if _is_bool(annotation):
                parser_group_add(group, f"--{dest}", action=argparse.BooleanOptionalAction, **kwargs)
            elif _is_mapping(annotation):
                parser_group_add(group, f"--{dest}", nargs="+", metavar="KEY=VALUE", **kwargs)
            elif _is_sequence(annotation):
                parser_group_add(group, f"--{dest}", nargs="+", metavar="VALUE", **kwargs)
            else:
                parser_group_add(group, f"--{dest}", metavar="VALUE", **kwargs)

    for f in dataclasses.fields(TrainConfig):
        cls = NESTED[TrainConfig][f.name]
        group = parser.add_argument_group(f"[{f.name}] settings", (cls.__doc__ or "").strip().splitlines()[0])
        walk(cls, getattr(defaults, f.name), f"{f.name}.", group)


def parser_group_add(group: argparse._ArgumentGroup, flag: str, **kwargs: Any) -> None:
    group.add_argument(flag, **kwargs)


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given on the command line as a nested dict (the shape of a TOML config)."""
    nested: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if "." not in dest:
            continue
        if isinstance(value, list) and value and isinstance(value[0], str) and "=" in value[0] and dest.endswith("columns"):
            value = {k: _scalar(v) if isinstance(_scalar(v), int) else v for k, v in (item.split("=", 1) for item in value)}
        elif isinstance(value, list):
            value = [_scalar(v) for v in value]
            if dest.endswith(".kcore") and len(value) == 1:
                value = value[0]
        elif isinstance(value, str):
            value = _scalar(value) if not dest.endswith(("path", "valid", "test", "features", "delimiter")) else value
        node = nested
        *parents, leaf = dest.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Deep-merges `overrides` into a copy of `base`."""
    out = dict(base)
    for key, value in overrides.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
