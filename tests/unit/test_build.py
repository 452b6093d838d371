"""The build the suite runs against: pure Python, or the core compiled by mypyc (setup.py).

Both must pass the whole suite; these tests check the build itself.  Which one is
installed is the environment's choice (an editable install is always pure, a wheel built
where a compiler is present is compiled), except that ``GOFER9P_EXPECT=compiled`` or
``pure`` makes the test fail when the installed build is not that one (so a run meant
for the compiled build cannot silently test the pure one).
"""

from __future__ import annotations

import importlib
import os
import tomllib
from pathlib import Path

import pytest

import gofer9p
from gofer9p.testing import is_compiled

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ROOT if (ROOT / "gofer9p").is_dir() else Path(gofer9p.__file__).parent.parent
"""This checkout's sources, or the installed package's (the suite copied elsewhere to run
against an installed build, where this tree's gofer9p must not be importable)."""


def _compiled_modules() -> list[str]:
    with open(ROOT / "pyproject.toml", "rb") as f:
        paths: list[str] = tomllib.load(f)["tool"]["gofer9p"]["compiled"]
    return [p.removesuffix(".py").replace("/", ".") for p in paths]


def _is_compiled(name: str) -> bool:
    return is_compiled(importlib.import_module(name))


def test_the_compiled_list_names_existing_modules() -> None:
    for name in _compiled_modules():
        assert (SOURCES / (name.replace(".", "/") + ".py")).is_file(), name


def test_all_or_none_of_the_core_is_compiled() -> None:
    """The compiled modules share one runtime library: a build has all of them or none."""
    kinds = {name: _is_compiled(name) for name in _compiled_modules()}
    assert len(set(kinds.values())) == 1, kinds
    expect = os.environ.get("GOFER9P_EXPECT")
    if expect:
        assert expect in ("compiled", "pure"), expect
        assert all(kinds.values()) == (expect == "compiled"), (expect, kinds)


def test_the_c_stat_module_comes_with_the_compiled_core() -> None:
    """``attach/_cstat.c`` is built and dropped with the mypyc modules (setup.py): a
    compiled build answers its hot stats in C, a pure one with ``_stat``'s Python twins."""
    from gofer9p.attach import _stat

    compiled = _is_compiled("gofer9p.protocol._wire")
    assert _stat.COMPILED == compiled
    assert (_stat.rgetattr is _stat.rgetattr_py) == (not compiled)
    assert (_stat.ident_at is _stat.ident_at_py) == (not compiled)


def test_a_source_checkout_holds_no_compiled_module() -> None:
    """A compiled module next to its source in a checkout (an in-place build) would be
    imported instead of it, so an edited ``.py`` would silently not run: setup.py never
    builds in place (an editable install is pure), and nothing else may have."""
    pkg = Path(gofer9p.__file__).parent.parent
    if not (pkg / "pyproject.toml").exists():
        return  # an installed package (site-packages): its sources are never edited
    found = []
    for name in [*_compiled_modules(), "gofer9p.attach._cstat"]:
        src = pkg / (name.replace(".", "/") + ".py")
        found += [str(so) for so in src.parent.glob(src.stem + ".*.so")]
    assert not found, f"compiled modules in a source checkout: {found}"


@pytest.mark.parametrize("name", _compiled_modules())
def test_a_compiled_module_is_the_installed_source(name: str) -> None:
    """What was compiled is this tree's source: each compiled module defines the
    names its source defines at top level (a stale build would miss new ones)."""
    import ast

    src = SOURCES / (name.replace(".", "/") + ".py")
    tree = ast.parse(src.read_text())
    names = {
        n.name
        for n in tree.body
        if isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
    }
    mod = importlib.import_module(name)
    assert names <= set(vars(mod)), names - set(vars(mod))


def test_run_time_replacements_refuse_compiled_modules() -> None:
    """The fault target and the planted defects replace what a module calls; on compiled
    code that would silently do nothing, so they refuse it (and accept pure code)."""
    import types

    from gofer9p.testing import require_interpreted

    pure = types.ModuleType("gofer9p.attach.fake_pure")
    pure.__file__ = "/x/gofer9p/attach/fake_pure.py"
    native = types.ModuleType("gofer9p.attach.fake_native")
    native.__file__ = "/x/gofer9p/attach/fake_native.cpython-311-x86_64-linux-gnu.so"
    require_interpreted([pure], "a test")
    with pytest.raises(RuntimeError, match=r"fake_native.*pure build"):
        require_interpreted([pure, native], "a test")


def test_the_fault_target_and_planted_defects_run_only_where_they_can() -> None:
    """On the pure build they apply and undo; on a compiled attach layer they refuse."""
    from gofer9p.testing import faults, plant

    if _is_compiled("gofer9p.attach._fids"):
        with pytest.raises(RuntimeError, match="pure build"):
            faults.apply(1)
        with pytest.raises(RuntimeError, match="pure build"):
            plant.apply(["follow"])
        return
    _, undo = faults.apply(1)
    undo()
    plant.apply(["follow"])()
