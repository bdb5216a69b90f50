"""One way every entry point reports failure.

A user error (bad input, a missing or unreadable file, a checkpoint that does not fit the model,
an unwritable output) is raised as ``UserError("<file>: <problem>")`` anywhere in the code. The
entry point's ``run_main`` turns it, and the ``OSError`` family, into one line on stderr::

    prog: error: <file>: <problem>

and exit status 2 (1 for a fault that is not the user's, e.g. a non-finite loss). The traceback
is printed only when the environment variable ``ICAM_DEBUG`` is set to a non-empty value other
than ``0``.
"""
from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable


class UserError(Exception):
    """A problem the user can fix; the message names the file (or flag) and the problem."""

    exit_code = 2


class RunError(Exception):
    """The run itself failed (e.g. training diverged to a non-finite loss); exit status 1."""

    exit_code = 1


def debug_enabled() -> bool:
    return os.environ.get("ICAM_DEBUG", "") not in ("", "0")


def error_line(prog: str, exc: BaseException) -> str:
    """``prog: error: <message>``; an OSError names its file and its reason."""
    if isinstance(exc, OSError) and not isinstance(exc, UserError):
        where = exc.filename if exc.filename is not None else ""
        reason = exc.strerror or str(exc)
        msg = f"{where}: {reason}" if where else reason
    else:
        msg = str(exc) or type(exc).__name__
    msg = " ".join(msg.split())  # one line, whatever the message held
    return f"{prog}: error: {msg}"


def run_main(main: Callable[..., object], prog: str, argv: list[str] | None = None) -> None:
    """Run ``main(argv)`` and exit with its status, reporting errors in one line.

    ``SystemExit`` (argparse, explicit exits) passes through unchanged. ``UserError``,
    ``RunError`` and ``OSError`` become ``prog: error: ...``; anything else is a bug and keeps
    its traceback.
    """
    try:
        rc = main(argv)
    except (UserError, RunError, OSError) as exc:
        if debug_enabled():
            traceback.print_exc()
        print(error_line(prog, exc), file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 2))
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(rc if isinstance(rc, int) else 0)
