"""The layout's promise, checked: the sans-IO core (relay/core, relay/ts) imports no I/O, no config and
nothing from the shell or the edges; only the command line's entry points import relay.cli."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

RELAY = Path(__file__).resolve().parents[2] / "relay"
PURE = ("core", "ts")
# what would make a core module do I/O, read configuration or depend on an outer layer
FORBIDDEN = (
    "asyncio", "socket", "ssl", "selectors", "sqlite3", "subprocess", "threading", "urllib.request",
    "uvloop", "aiofiles", "pydantic", "yaml", "httptools",
    "relay.config", "relay.shell", "relay.storage", "relay.sources", "relay.tuner", "relay.cli",
)  # fmt: skip


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level imports count too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _is(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


PURE_FILES = sorted(p for layer in PURE for p in (RELAY / layer).rglob("*.py"))


@pytest.mark.parametrize("path", PURE_FILES, ids=lambda p: str(p.relative_to(RELAY)))
def test_a_core_module_imports_no_io_config_or_outer_layer(path: Path) -> None:
    bad = sorted(n for n in imports_of(path) if any(_is(n, f) for f in FORBIDDEN))
    assert not bad, f"{path.relative_to(RELAY)} imports {bad}"


def test_the_checker_sees_imports_inside_functions(tmp_path: Path) -> None:
    f = tmp_path / "m.py"
    f.write_text("def f():\n    import asyncio\n    from relay.config import Config\n")
    assert {"asyncio", "relay.config"} <= imports_of(f)


def test_only_the_entry_points_import_the_command_line() -> None:
    users = sorted(
        str(p.relative_to(RELAY))
        for p in RELAY.rglob("*.py")
        if p.parent.name != "cli" and any(_is(n, "relay.cli") for n in imports_of(p))
    )
    assert users == ["__main__.py"]


def test_the_package_never_imports_the_tests() -> None:
    users = [p for p in RELAY.rglob("*.py") if any(_is(n, "tests") for n in imports_of(p))]
    assert not users


def test_a_module_over_400_lines_says_why_in_its_docstring() -> None:
    """The layout's size rule: a long module is a choice, and its docstring defends it."""
    silent = []
    for p in sorted(RELAY.rglob("*.py")):
        text = p.read_text()
        if text.count("\n") <= 400:
            continue
        doc = ast.get_docstring(ast.parse(text)) or ""
        if "because" not in doc or "lines" not in " ".join(doc.split()):
            silent.append(str(p.relative_to(RELAY)))
    assert not silent, f"over 400 lines and no docstring line saying why: {silent}"
