"""The package map and the import-linter contracts cover every module."""

from __future__ import annotations

import pkgutil
import tomllib
from pathlib import Path

import zeroth

ROOT = Path(__file__).resolve().parents[2]
DEPLOYABLES = {"operator", "trainer", "rollout"}


def test_deployables_are_subpackages():
    import zeroth.operator
    import zeroth.rollout
    import zeroth.trainer

    for mod, folder in ((zeroth.operator, "operator"), (zeroth.trainer, "trainer"), (zeroth.rollout, "rollout")):
        assert Path(mod.__file__).parent == ROOT / folder


def test_core_contract_lists_every_core_module():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    core = next(c for c in config if c["name"].startswith("The core"))
    modules = {f"zeroth.{m.name}" for m in pkgutil.iter_modules(zeroth.__path__) if m.name not in DEPLOYABLES | {"__main__"}}
    assert set(core["source_modules"]) == modules
