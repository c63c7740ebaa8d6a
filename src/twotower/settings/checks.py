"""Type checks of settings against their dataclass annotations, shared by the TOML/flag settings
(`twotower.settings.train`) and the model description a saved model carries (`twotower.settings.model`), so
that a wrong type is named by its setting ("model.embedding_dim must be an integer; got '128'")
instead of failing later inside a comparison."""

from __future__ import annotations

import types
import typing
from typing import Any

__all__ = ["check_setting", "union_members"]

_SCALARS = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def union_members(annotation: Any) -> tuple[Any, ...]:
    """The members of a union annotation (`int | None` -> int, None), or the annotation itself."""
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return typing.get_args(annotation) if union else (annotation,)


def _scalar_fits(value: Any, scalars: list[type]) -> bool:
    """`value` is one of the scalar types (bool is no int; an int is a float)."""
    return any(
        (isinstance(value, bool) if o is bool else isinstance(value, o) and not isinstance(value, bool))
        or (o is float and isinstance(value, int) and not isinstance(value, bool))
        for o in scalars
    )


def check_setting(cls: type, key: str, value: Any, path: str) -> Any:
    """Checks a setting against its annotation (ValueError naming it): scalars by type, lists and
    tuples element by element (lists become tuples where the field is a tuple). Unions accept any
    member; other types (dicts) pass through to the section's own checks."""
    options = union_members(typing.get_type_hints(cls)[key])
    if value is None:
        if type(None) in options:
            return None
        raise ValueError(f"{path} must be set (got none)")
    containers = [o for o in options if typing.get_origin(o) in (list, tuple)]
    if containers and isinstance(value, (list, tuple)):
        return _check_container(containers[0], value, path)
    scalars = [o for o in options if o in _SCALARS]
    if containers and not scalars:
        raise ValueError(f"{path} must be a list; got {value!r}")
    others = [o for o in options if o is not type(None) and o not in _SCALARS and o not in containers]
    if not scalars or others:
        return value  # dicts and unions with other types: validated by the section's own checks
    if not _scalar_fits(value, scalars):
        wanted = " or ".join(_SCALARS[o] for o in scalars)
        raise ValueError(f"{path} must be {wanted}; got {value!r}")
    return float(value) if scalars == [float] else value


def _check_container(annotation: Any, value: Any, path: str) -> Any:
    """A list[T] / tuple[T, ...] / tuple[A, B] setting: a list of the right length whose scalar
    elements have the annotated types (a string such as "64" is not a list of widths)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"{path} must be a list; got {value!r}")
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(value) != len(args):
            raise ValueError(f"{path} must be a list of {len(args)} values; got {value!r}")
        element_types = list(args)
    else:
        element_types = [args[0] if args else Any] * len(value)
    checked = []
    for i, (element, element_type) in enumerate(zip(value, element_types, strict=True)):
        options = union_members(element_type)
        if element is None and type(None) in options:
            checked.append(None)
            continue
        scalars = [o for o in options if o in _SCALARS]
        if scalars == [str] and isinstance(element, (int, float)) and not isinstance(element, bool):
            element = str(element)  # a name such as 2020 typed on the command line is read as a number
        if scalars and not _scalar_fits(element, scalars):
            wanted = " or ".join(_SCALARS[o] for o in scalars)
            raise ValueError(f"{path}[{i}] must be {wanted}; got {element!r}")
        checked.append(element)
    return tuple(checked) if origin is tuple else checked
