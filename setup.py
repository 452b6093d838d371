"""Build gofer9p: the sans-IO core compiled with mypyc where a C compiler is present.

Everything else (metadata, packages, the console script) is in pyproject.toml; this file
only adds the compiled extension modules, and every way they can be missing leaves the
pure-Python package, which is complete on its own (the compiled modules are the same source):

* ``GOFER9P_PURE=1`` in the environment: no compilation;
* an editable install (``pip install -e``, as scripts/setup.sh makes for development): no
  compilation.  Compiled modules built in place would sit next to their sources and be
  imported instead of them, so an edited ``.py`` would silently not run;
* mypyc not importable (a build without build isolation and without mypy): pure, with a
  warning;
* the C compiler or the Python headers missing, or any compile error: the build goes on
  pure, with a warning, and leaves none of the compiled modules in the build (they share one
  runtime library: half of them would not import).

Which modules: besides ``gofer9p/attach/_cstat.c`` (two stat calls without a
``stat_result``, with Python twins in ``attach/_stat.py``), the protocol's wire layer and
framing, the connection core, the quiet wait, the statistics, the server's connection loop (``server.py``: trio runs its compiled
coroutines like any others) and the attach layer, which every request goes through (issue
#17; benchmarks/README.md measures what it saves).  Not the message classes or the generated
codec (attrs classes and untyped generated code, which mypyc compiles wrongly or not at
all), and not ``attach/_sys.py`` (ctypes structures).  Compiled code binds its calls early
(an imported module is a static of the extension; a native class's methods cannot be
replaced), so what replaces functions or methods at run time needs the pure build: the
fault target and the planted defects (gofer9p.testing refuses a compiled build), and the
few tests that see which methods a path calls (skipped there, run by the default tier).
"""

from __future__ import annotations

import os
import sys
import tomllib
from typing import Any

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "pyproject.toml"), "rb") as _f:
    COMPILED: list[str] = tomllib.load(_f)["tool"]["gofer9p"]["compiled"]
"""The modules mypyc compiles (pyproject's [tool.gofer9p]; tests/unit/test_build.py reads it too)."""


CSTAT = "gofer9p.attach._cstat"
CSTAT_SOURCE = "gofer9p/attach/_cstat.c"
"""The one hand-written C module: built with the mypyc modules, and dropped with them."""


def _say(msg: str) -> None:
    print(f"gofer9p setup: {msg}", file=sys.stderr)


def _editable() -> bool:
    """Whether setuptools is building an editable install (PEP 660: ``editable_wheel``)."""
    return any(a in ("editable_wheel", "develop") for a in sys.argv[1:])


class OptionalBuildExt(build_ext):
    """build_ext that falls back to the pure-Python package when compiling fails."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as e:  # no compiler, no Python.h, a compile or link error
            self._drop_outputs()
            _say(f"compiling the core failed ({e!r}): installing pure Python")

    def _drop_outputs(self) -> None:
        for ext in self.extensions:
            path = self.get_ext_fullpath(ext.name)
            if os.path.exists(path):
                os.unlink(path)


def _ext_modules() -> list[Any]:
    if os.environ.get("GOFER9P_PURE") == "1":
        _say("GOFER9P_PURE=1: pure Python")
        return []
    if _editable():
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        _say("mypyc is not installed: pure Python")
        return []
    try:
        modules = list(mypycify(COMPILED, opt_level="3"))
    except BaseException as e:  # mypy's type check failed (SystemExit), or mypyc itself
        _say(f"mypyc could not compile the core ({e!r}): pure Python")
        return []
    # The stat calls of the hot requests, in C (gofer9p/attach/_stat.py says why).
    return [*modules, Extension(CSTAT, [CSTAT_SOURCE], extra_compile_args=["-O2", "-Wall"])]


setup(ext_modules=_ext_modules(), cmdclass={"build_ext": OptionalBuildExt})
