"""Ctrl-C and SIGTERM for the command line: one clean stop, then a quiet exit.

``main(entry)`` runs a command line with SIGTERM handled as Ctrl-C: the first
signal raises KeyboardInterrupt where the program is (a run records itself
``interrupted``, its finished snapshots and checkpoint stay), the second exits at
once without a word. The exit status is 130 for SIGINT and 143 for SIGTERM (128 +
the signal), and a KeyboardInterrupt never reaches the user as a traceback, also
while the program is still importing. This module imports only the standard
library, so it is in place before the heavy imports start.
"""
from __future__ import annotations

import io
import os
import signal
import sys
from contextlib import redirect_stderr
from typing import Callable

_received: list[int] = []


def _handler(signum: int, frame) -> None:
    if _received:  # the second signal: the user means it
        os._exit(128 + _received[0])
    _received.append(signum)
    raise KeyboardInterrupt


def install() -> None:
    """Route SIGINT and SIGTERM to ``_handler`` (main thread only, as Python requires)."""
    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)


def exit_status() -> int:
    """130 after Ctrl-C (or a KeyboardInterrupt with no signal), 143 after SIGTERM."""
    return 128 + (_received[0] if _received else signal.SIGINT)


def main(entry: Callable[[], Callable[[], None]]) -> None:
    """Install the handlers, then import (``entry()`` returns the command) and run the command.

    A KeyboardInterrupt that escapes the command exits with ``exit_status()`` and no traceback,
    and so does any error after a signal: an interrupt inside an extension's import comes out
    as an ImportError (onnxruntime's "import numpy failed"), after the extension printed the
    interrupted import's traceback: what the imports print is held back and shown only
    when no signal came.
    """
    install()
    try:
        held = io.StringIO()
        try:
            with redirect_stderr(held):
                command = entry()
        finally:
            if not _received:
                sys.stderr.write(held.getvalue())
        command()
    except (KeyboardInterrupt, Exception):
        if not _received and not isinstance(sys.exc_info()[1], KeyboardInterrupt):
            raise
        sys.stderr.flush()
        sys.exit(exit_status())


def nst() -> None:
    """The ``nst`` console script: engine.cli's app under ``main``."""
    main(lambda: __import__("engine.cli", fromlist=["main"]).main)
