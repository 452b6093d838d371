"""Test-only entry points.  Nothing in the release code path imports this package."""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType


def is_compiled(module: ModuleType) -> bool:
    """Whether ``module`` was compiled by mypyc (an extension module, not its ``.py``)."""
    return not str(module.__file__).endswith(".py")


def require_interpreted(modules: Iterable[ModuleType], what: str) -> None:
    """Refuse to go on when one of ``modules`` is compiled (mypyc).

    The fault target and the planted defects work by replacing what a module's code
    calls (its ``os``, its functions, its classes' methods).  Compiled code binds those
    calls when it is built (an imported module is a static of the extension, a native
    class's methods cannot be replaced), so on the compiled build the replacements would
    silently not be used: a fault run that injects nothing, a planted defect that is not
    there.  Better to say so: these tools need the pure build (an editable install, as
    scripts/setup.sh makes, or ``GOFER9P_PURE=1 pip install .``).
    """
    compiled = sorted(m.__name__ for m in modules if is_compiled(m))
    if compiled:
        raise RuntimeError(
            f"{what} replaces what {', '.join(compiled)} call, and this build compiled "
            "them (mypyc binds those calls early): use the pure build (an editable "
            "install, or GOFER9P_PURE=1 pip install .)"
        )
