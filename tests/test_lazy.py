"""lazy_exports: the one `__getattr__` / `__dir__` of the packages that load their names on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest

from twotower._lazy import lazy_exports

PACKAGES = ["twotower", "twotower.data", "twotower.model", "twotower.training"]


def test_names_and_aliases_load_from_their_modules():
    namespace = {"__name__": "pkg", "eager": 1}
    getattr_, dir_ = lazy_exports(namespace, {"sqrt": "math", "root": "math:sqrt", "dumps": "json"})
    import json
    import math

    assert getattr_("sqrt") is math.sqrt and getattr_("root") is math.sqrt and getattr_("dumps") is json.dumps
    namespace["later"] = 2  # dir follows the package's globals as they grow
    assert dir_() == ["__name__", "dumps", "eager", "later", "root", "sqrt"]


def test_an_unknown_name_is_an_attribute_error_naming_the_package():
    getattr_, _ = lazy_exports({"__name__": "pkg"}, {"sqrt": "math"})
    with pytest.raises(AttributeError, match="module 'pkg' has no attribute 'cbrt'"):
        getattr_("cbrt")
    import twotower.model

    with pytest.raises(AttributeError, match="module 'twotower.model' has no attribute 'nope'"):
        twotower.model.nope  # noqa: B018


@pytest.mark.parametrize("package", PACKAGES)
def test_every_listed_name_resolves_and_is_listed_by_dir(package):
    module = __import__(package, fromlist=["__all__"])
    for name in module.__all__:
        assert getattr(module, name) is not None, name
        assert name in dir(module), name


def test_aliases_of_the_packages():
    import twotower.data

    assert twotower.data.load is twotower.data.build_dataset
    assert twotower.topk_reference is twotower.topk_eager and "topk_reference" not in twotower.__all__


def test_importing_a_package_loads_none_of_its_names():
    code = ("import sys, twotower, twotower.data, twotower.model, twotower.training\n"
            "print(sorted(m for m in ('torch', 'numba', 'pyarrow') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
