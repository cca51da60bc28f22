"""What tsh and tctl print for an error they did not foresee: one line
naming it, never a traceback (``TELEPORT_DEBUG=1`` prints the traceback
too, for a bug report). Errors they foresee have their own clearer lines."""
from __future__ import annotations

import os
import sys
import traceback
from typing import NoReturn

DEBUG_ENV = "TELEPORT_DEBUG"


def exit_unexpected(program: str, error: BaseException) -> NoReturn:
    if os.environ.get(DEBUG_ENV):
        traceback.print_exception(error)
    detail = str(error) or type(error).__name__
    if isinstance(error, OSError) and error.filename:
        detail = f"{error.strerror or type(error).__name__}: {error.filename}"
    sys.stderr.write(f"ERROR: {detail} ({program} did not expect this; {DEBUG_ENV}=1 shows where it happened)\n")
    sys.stderr.flush()
    raise SystemExit(1)
