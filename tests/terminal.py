"""Commands run as a terminal runs them."""

import sys


def with_ctrl_c(command: list[str]) -> list[str]:
    """`command` as a terminal runs it in the foreground: SIGINT at its default action (Python's KeyboardInterrupt),
    whatever this process inherited. A shell without job control starts its background jobs with SIGINT ignored,
    and a program started so, pytest and the commands it starts included, never sees Ctrl-C."""
    default = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"
    )
    return [sys.executable, "-c", default, *command]
