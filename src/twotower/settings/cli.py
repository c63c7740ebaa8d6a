"""Command-line flags generated from the `TrainConfig` dataclasses: every setting is a flag
`--section.key` whose help text comes from the dataclass docstring and shows the default."""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing
from typing import Any

from twotower.settings.checks import union_members
from twotower.settings.train import NESTED, TrainConfig

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


def _key_value(text: str) -> tuple[str, Any]:
    """ROLE=COLUMN; a column given as an integer is a 0-based index."""
    key, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    parsed = _scalar(value)
    return key, parsed if isinstance(parsed, int) and not isinstance(parsed, bool) else value


def add_config_flags(parser: argparse.ArgumentParser, sections: tuple[str, ...] | None = None) -> None:
    """Adds one flag per setting of TrainConfig (of `sections` only, when given), grouped by
    section. Each value is parsed as its annotation says: strings stay strings, `key=value` pairs
    become a dict, a one-element list for a setting that is a scalar or a sequence (k-core) becomes
    that scalar."""
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
            text = (EXTRA_HELP.get(f.name, helps.get(f.name, "")) if cls.__name__ == "DataConfig"
                    else helps.get(f.name, ""))
            options = union_members(hints[f.name])
            origins = {typing.get_origin(o) for o in options}
            kwargs: dict[str, Any] = {
                "dest": dest, "default": argparse.SUPPRESS, "help": f"{text} (default: {value!r})"
            }
            if hints[f.name] is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            elif dict in origins:
                kwargs.update(nargs="+", metavar="KEY=VALUE", type=_key_value, action=_DictAction)
            elif origins & {list, tuple}:
                scalar_too = any(o in (int, float) for o in options)
                kwargs.update(
                    nargs="+", metavar="VALUE", type=_scalar, action=_ScalarOrListAction if scalar_too else None
                )
            else:
                kwargs.update(metavar="VALUE", type=str if str in options else _scalar)
            group.add_argument(f"--{dest}", **{k: v for k, v in kwargs.items() if v is not None})

    for f in dataclasses.fields(TrainConfig):
        if sections is not None and f.name not in sections:
            continue
        cls = NESTED[TrainConfig][f.name]
        group = parser.add_argument_group(f"[{f.name}] settings", (cls.__doc__ or "").strip().splitlines()[0])
        walk(cls, getattr(defaults, f.name), f"{f.name}.", group)


class _DictAction(argparse.Action):
    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, dict(values))


class _ScalarOrListAction(argparse.Action):
    def __call__(self, parser: Any, namespace: argparse.Namespace, values: Any, option_string: Any = None) -> None:
        setattr(namespace, self.dest, values[0] if len(values) == 1 else list(values))


def overrides_from_args(args: argparse.Namespace) -> dict[str, Any]:
    """The flags given on the command line as a nested dict (the shape of a TOML config)."""
    nested: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if "." not in dest:
            continue
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
