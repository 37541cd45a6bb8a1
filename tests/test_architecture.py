"""The layers are what docs/architecture.md says and what import-linter enforces, and nothing below the top
reaches into the package facade."""

from __future__ import annotations

import re
from pathlib import Path

import grimp
import tomllib

ROOT = Path(__file__).resolve().parent.parent


def _contract_layers() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (contract,) = [c for c in config["tool"]["importlinter"]["contracts"] if c["id"] == "layers"]
    return [" | ".join(part.strip() for part in layer.split("|")) for layer in contract["layers"]]


def _documented_layers() -> list[str]:
    doc = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    block = re.search(r"<!-- layers -->\n```\n(.*?)```", doc, re.S)
    assert block, "docs/architecture.md has no ```-fenced layer list after <!-- layers -->"
    return [re.sub(r"\s+#.*$", "", line).strip() for line in block.group(1).splitlines() if line.strip()]


def test_the_documented_layers_are_the_enforced_ones() -> None:
    assert _documented_layers() == _contract_layers()


def test_every_module_belongs_to_a_layer() -> None:
    layered = {name.strip() for layer in _contract_layers() for name in layer.split("|")}
    graph = grimp.build_graph("m3e")
    tops = {module.split(".")[1] for module in graph.modules if module.count(".") >= 1}
    tops.discard("__main__")
    assert sorted(tops - layered) == []


def test_nothing_inside_imports_the_package_facade() -> None:
    # `m3e/__init__.py` is for users; a module that imports it climbs back to the top of the house.
    graph = grimp.build_graph("m3e")
    importers = sorted(m for m in graph.find_modules_that_directly_import("m3e") if m != "m3e")
    assert importers == []
