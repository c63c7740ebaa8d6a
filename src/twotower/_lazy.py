"""Lazy exports for the packages' `__init__` modules: a name loads its module on first use.

Importing a package then costs nothing beyond the package itself: `import twotower` stays light and
`import twotower.data.csr` does not load the file readers (pyarrow) with `twotower.data`. Standard
library only, like everything `twotower.settings` may pull in.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(
    namespace: dict[str, Any], exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """`(__getattr__, __dir__)` for the package whose globals are `namespace`.

    Args:
        namespace: the package's `globals()` (its name and eager attributes).
        exports: public name -> "module" (the module's attribute of that name) or "module:attribute"
            (another name, e.g. an alias).

    Example:
        >>> getattr_, dir_ = lazy_exports({"__name__": "pkg"}, {"sqrt": "math", "root": "math:sqrt"})
        >>> getattr_("root")(9.0), "sqrt" in dir_()
        (3.0, True)
    """
    package = namespace["__name__"]

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module, _, attribute = exports[name].partition(":")
        return getattr(importlib.import_module(module), attribute or name)

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
