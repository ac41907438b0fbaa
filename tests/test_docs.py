"""Generated documentation stays in sync with routing, and the docs' links resolve."""
from __future__ import annotations

import re
from pathlib import Path

from tools.sync_docs import DOC, rendered

REPO = Path(__file__).resolve().parents[1]


def test_architecture_topology_tables_are_generated_from_routing():
    assert DOC.read_text() == rendered(DOC.read_text()), (
        "docs/architecture.md is out of date with routing: run `make docs`"
    )


def test_readme_starts_with_the_two_commands():
    readme = (REPO / "README.md").read_text()
    first_block = readme.split("```", 2)[1]
    assert "make run" in first_block and "make test" in first_block


def test_relative_links_in_docs_point_at_files_that_exist():
    broken = []
    for doc in [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
            if "://" in target:
                continue
            if not (doc.parent / target).exists():
                broken.append(f"{doc.relative_to(REPO)} -> {target}")
    assert broken == []


def test_every_runbook_mentioned_in_code_exists():
    mentioned = set()
    for path in [*REPO.glob("routing/*.py"), *REPO.glob("platform/**/*.py")]:
        mentioned |= set(re.findall(r"docs/runbooks/[\w-]+\.md", path.read_text()))
    assert mentioned, "the code should point operators at runbooks"
    assert [m for m in mentioned if not (REPO / m).exists()] == []


def test_every_environment_variable_read_is_documented_in_operations():
    sources = [*REPO.glob("platform/switchyard/**/*.py"), *REPO.glob("routing/*.py"),
               *(p for p in (REPO / "deploy" / "bin").iterdir() if p.is_file())]
    read = set()
    for path in sources:
        text = path.read_text()
        read |= set(re.findall(
            r"(?:env_int|env_bool|environ\.get|getenv)\(\s*\"([A-Z][A-Z0-9_]+)\"", text))
        read |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]+):-", text))
    ops = (REPO / "docs" / "operations.md").read_text()
    internal = {"PYTHON", "SWITCHYARD_TEST_RUN_ID"}
    assert read - internal, "the scan should find the settings' variables"
    assert sorted(v for v in read - internal if f"`{v}`" not in ops) == []
