"""What every `python -m rlvfast.*` command shares at its edge: how errors and signals end it.

- `UserError`: bad input from the user (a flag, a file, a config value). The command prints
  one line, `<prog>: error: <message>`, and exits 2, as argparse does; no traceback.
  It subclasses ValueError, so library callers can catch either.
- SIGTERM (`timeout`, Slurm, `docker stop`) raises `SystemExit(143)` in the main thread,
  so `finally` blocks and `atexit` handlers run: grader pools shut down, locks are released.
- Any other exception is a bug and keeps its traceback.
- `CommandParser`: argparse whose error line reads like the others (`<prog>: error: ...`,
  exit 2) while its usage line keeps `python -m <prog>`.

Not here: what the commands do.
"""
from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Callable

EXIT_USAGE = 2
EXIT_SIGTERM = 128 + signal.SIGTERM
EXIT_INTERRUPT = 130


class UserError(ValueError):
    """Bad user input; printed as one line and exit status 2 by `run_command`."""


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(EXIT_SIGTERM)


def run_command(main: Callable[[list[str] | None], int | None], prog: str,
                argv: list[str] | None = None) -> int:
    """Runs `main(argv)` as a command and returns its exit status (0 when it returns None)."""
    previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        status = main(argv)
    except UserError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPT
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0 if status is None else int(status)


class CommandParser(argparse.ArgumentParser):
    """An ArgumentParser for `python -m rlvfast.<command>`: usage names the module command,
    the error line names the command as `run_command` does, and the status is 2."""

    def __init__(self, command: str, **kwargs) -> None:
        super().__init__(prog=f"python -m {command}", **kwargs)
        self.command = command

    def error(self, message: str):
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.command}: error: {message}\n")

