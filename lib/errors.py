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

import math
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path


class UserError(ValueError):
    """A problem the user can fix; the message names the file (or flag) and the problem.

    A ``ValueError`` subclass, so library callers that catch ``ValueError`` keep working.
    """

    exit_code = 2


class RunError(Exception):
    """The run itself failed (e.g. training diverged to a non-finite loss); exit status 1."""

    exit_code = 1


def check_writable_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``path`` (with parents) and prove it writable by creating and removing a temp file.

    Run before expensive work, so an unwritable output fails in a second, not after the run.
    Raises ``UserError("<path>: <what> is not writable (<reason>)")``.
    """
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test."):
            pass
    except OSError as e:
        raise UserError(f"{path}: {what} is not writable ({e.strerror or e})") from e
    return path


def in_range(value, spec: str) -> bool:
    """Whether a finite number ``value`` satisfies ``spec``: ``"> 0"``, ``">= 1"``, ``"< 1"``,
    ``"<= 1"`` or an interval ``"[0, 1]"``, ``"(0, 1]"``, ``"[0, 1)"``, ``"(0, 1)"``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return False
    spec = spec.strip()
    if spec[0] in "[(":
        lo, hi = (float(t) for t in spec[1:-1].split(","))
        return ((lo <= value) if spec[0] == "[" else (lo < value)) and \
            ((value <= hi) if spec[-1] == "]" else (value < hi))
    op, bound = spec.split()
    bound = float(bound)
    return {">": value > bound, ">=": value >= bound, "<": value < bound, "<=": value <= bound}[op]


def check_args(args, rules: dict[str, str]) -> None:
    """Range checks of numeric command-line flags, e.g. ``{"lr": "> 0", "num_workers": ">= 0"}``
    (specs as in :func:`in_range`). A flag whose value is None (unset) or absent is skipped;
    a list is checked element-wise; a word such as ``auto`` is not a number to check. Raises
    ``UserError("--lr: must be > 0, got -1.0")``."""
    for name, spec in rules.items():
        value = getattr(args, name, None)
        if value is None or isinstance(value, str):
            continue
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if not in_range(v, spec):
                allowed = f"in {spec}" if spec[0] in "[(" else spec
                raise UserError(f"--{name}: must be {allowed}, got {value}")


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
        if "Original Traceback" in msg:
            # Re-raised from a DataLoader worker: keep the original exception's own message.
            last = msg.strip().splitlines()[-1]
            msg = last.split(": ", 1)[1] if last.split(": ", 1)[0].endswith("Error") else last
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
