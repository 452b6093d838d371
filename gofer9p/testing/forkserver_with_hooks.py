"""The fork-server whose gofers carry :mod:`gofer9p.testing.gofer_with_hooks`' SIGUSR1 hook.

Run as ``python -m gofer9p.testing.forkserver_with_hooks --fd N`` (``ForkServer.start(module=...)``)
with ``GOFER9P_TEST_FORBIDDEN_SYSCALL`` in its environment: every gofer it forks installs the hook
after confinement, so the seccomp tests run against forked gofers too.  The release entry points
(``gofer9p forkserver``, ``python -m gofer9p.forkserver``) pass no hook and read no such variable.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from gofer9p import forkserver
from gofer9p.testing.gofer_with_hooks import armed_hook


def main(argv: Sequence[str] | None = None) -> int:
    """Run the fork-server with the hook armed in each child after confinement."""
    return forkserver.run(argv, after_confine=armed_hook())


if __name__ == "__main__":
    sys.exit(main())
