"""A missing optional dependency is reported one way everywhere: what needed it and what to install."""

from __future__ import annotations

import pytest

from m3e.errors import M3EError
from m3e.extras import MissingDependencyError, require


def test_missing_package_names_the_package_and_the_extra() -> None:
    with pytest.raises(MissingDependencyError) as caught:
        require("m3e_not_a_module.sub", purpose="the thing", extra="serve", package="not-a-module")
    assert isinstance(caught.value, M3EError) and isinstance(caught.value, ImportError)
    assert str(caught.value) == "the thing needs not-a-module (not installed): pip install 'm3e[serve]'"


def test_package_outside_the_extras_gets_its_own_install_line() -> None:
    with pytest.raises(MissingDependencyError, match=r"needs m3e_absent .* pip install m3e_absent$"):
        require("m3e_absent", purpose="x", extra=None)


def test_installed_module_is_returned() -> None:
    assert require("json", purpose="x", extra=None).dumps([1]) == "[1]"
