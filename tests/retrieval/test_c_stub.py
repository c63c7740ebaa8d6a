"""src/twotower/_C.pyi describes the compiled module as it is: the same names, and for every
function and method the same parameters, in the same order, keyword-only where the binding says
so, with the same defaults (read from pybind11's signature line)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import twotower._C as C

STUB = Path(__file__).resolve().parents[2] / "src" / "twotower" / "_C.pyi"


def stub_tree() -> ast.Module:
    return ast.parse(STUB.read_text(encoding="utf-8"))


def stub_params(fn: ast.FunctionDef) -> list[tuple[str, bool, str | None]]:
    """(name, keyword-only, default as source) per parameter, self left out."""
    args = fn.args
    positional = [a for a in args.args if a.arg != "self"]
    defaults = [None] * (len(positional) - len(args.defaults)) + [ast.unparse(d) for d in args.defaults]
    out = [(a.arg, False, d) for a, d in zip(positional, defaults, strict=True)]
    out += [(a.arg, True, None if d is None else ast.unparse(d))
            for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)]
    return out


def bound_params(obj: object) -> list[tuple[str, bool, str | None]]:
    """The same, from pybind11's first docstring line `name(a: T, *, b: T = d) -> R`."""
    line = obj.__doc__.strip().splitlines()[0]
    inside = re.match(r"\w+\((.*)\) ->", line).group(1)
    out, keyword_only = [], False
    for part in filter(None, (p.strip() for p in re.split(r",\s*(?![^\[]*\])", inside))):
        if part == "*":
            keyword_only = True
            continue
        name, _, rest = part.partition(":")
        if name == "self":
            continue
        default = rest.split("=", 1)[1].strip() if "=" in rest else None
        out.append((name.strip(), keyword_only, None if default is None else ast.unparse(ast.parse(default).body[0])))
    return out


def public(names) -> set[str]:
    return {n for n in names if not n.startswith("_")}


def test_the_stub_names_what_the_module_exports():
    tree = stub_tree()
    stubbed = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    assert public(stubbed) == public(dir(C))
    cls = next(node for node in tree.body if isinstance(node, ast.ClassDef) and node.name == "PackedItems")
    members = {node.name for node in cls.body if isinstance(node, ast.FunctionDef)} - {"__init__"}
    assert public(members) == public(dir(C.PackedItems))


def test_every_stubbed_signature_matches_the_binding():
    tree = stub_tree()
    checked = 0
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            assert stub_params(node) == bound_params(getattr(C, node.name)), node.name
            checked += 1
        if isinstance(node, ast.ClassDef):
            for method in (m for m in node.body if isinstance(m, ast.FunctionDef)):
                if any(ast.unparse(d) == "property" for d in method.decorator_list):
                    assert isinstance(getattr(C.PackedItems, method.name), property), method.name
                    continue
                assert stub_params(method) == bound_params(getattr(C.PackedItems, method.name)), method.name
                checked += 1
    assert checked == 6  # topk, available_simd, default_num_threads, selected_simd, __init__, search
