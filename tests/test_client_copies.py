"""The constants switchyard_client copies from routing/ (it may not import the platform)
are still the same: a drift would publish to the wrong exchange or the wrong priority."""
from __future__ import annotations

import ast
import sys
import tomllib
from pathlib import Path

import pytest
from switchyard_client import priorities as copied

from routing import priorities, topology


def test_exchange_is_routings():
    assert copied.EXCHANGE_NAME == topology.EXCHANGE_NAME
    assert copied.EXCHANGE_TYPE == topology.TASK_EXCHANGE.type


def test_priority_scale_is_routings():
    assert (copied.MAX_PRIORITY, copied.RELATIVE_MIN, copied.RELATIVE_MAX,
            copied.RELATIVE_DEFAULT) == (priorities.MAX_PRIORITY, priorities.RELATIVE_MIN,
                                         priorities.RELATIVE_MAX, priorities.RELATIVE_DEFAULT)


@pytest.mark.parametrize("tier", priorities.TIERS, ids=lambda t: t.name)
def test_placement_is_tier_place_for_every_relative_priority(tier):
    for relative in [None, *range(priorities.RELATIVE_MIN - 3, priorities.RELATIVE_MAX + 4)]:
        assert copied.place((tier.low, tier.high), relative) == tier.place(relative), relative


def test_placement_matches_on_every_possible_band():
    # A tier's band may change; the rule must agree on any band routing would accept.
    for low in range(priorities.MAX_PRIORITY + 1):
        for high in range(low, priorities.MAX_PRIORITY + 1):
            tier = priorities.Tier("any", low=low, high=high)
            for relative in [None, *range(priorities.RELATIVE_MIN, priorities.RELATIVE_MAX + 1)]:
                assert copied.place((low, high), relative) == tier.place(relative)


def test_relative_priorities_outside_the_scale_are_refused_as_the_api_does():
    for bad in (-1, priorities.RELATIVE_MAX + 1, 2.5, "7", True):
        with pytest.raises(ValueError, match="priority"):
            copied.check_relative(bad)
    assert [copied.check_relative(p) for p in (None, 0, 9)] == [None, 0, 9]


def test_the_client_imports_only_the_standard_library_and_celery():
    # Sharing by copy only: an import of the platform (or of Django) would make
    # `pip install ./client` useless outside this repository.
    allowed = set(sys.stdlib_module_names) | {"celery", "kombu"}
    package = Path(copied.__file__).parent
    found = {}
    for module in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                found.setdefault(name.split(".")[0], set()).add(module.name)
    assert {top: files for top, files in found.items() if top not in allowed} == {}
    assert "celery" in found  # the scan sees the imports


def test_the_client_pins_the_celery_the_platform_pins():
    repo = Path(__file__).resolve().parents[1]
    project = tomllib.loads((repo / "client" / "pyproject.toml").read_text())["project"]
    pinned = [line.strip() for line in (repo / "requirements.txt").read_text().splitlines()
              if line.startswith("celery==")]
    assert project["dependencies"] == pinned and len(pinned) == 1
