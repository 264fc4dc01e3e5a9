"""The command edge: a UserError is one line and exit 2, SIGTERM becomes SystemExit(143)
(so `finally` and atexit run), other exceptions keep their traceback."""
import os
import signal

import pytest

from rlvfast.cli import EXIT_SIGTERM, UserError, run_command


def test_user_error_is_one_line_and_exit_2(capsys):
    def main(argv):
        raise UserError(f"--lr {argv[0]!r}: expected a finite number > 0")

    assert run_command(main, "rlvfast.train", ["inf"]) == 2
    err = capsys.readouterr().err
    assert err == "rlvfast.train: error: --lr 'inf': expected a finite number > 0\n"


def test_return_value_is_the_status():
    assert run_command(lambda argv: None, "p") == 0
    assert run_command(lambda argv: 3, "p") == 3


def test_a_bug_keeps_its_traceback():
    def main(argv):
        raise KeyError("bug")

    with pytest.raises(KeyError):
        run_command(main, "p")


def test_sigterm_runs_finally_blocks():
    ran = []

    def main(argv):
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        finally:
            ran.append("finally")

    with pytest.raises(SystemExit) as exc:
        run_command(main, "p")
    assert exc.value.code == EXIT_SIGTERM and ran == ["finally"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_command_parser_errors_name_the_command(capsys):
    from rlvfast.cli import CommandParser

    parser = CommandParser("rlvfast.train")
    parser.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as exc:
        parser.parse_args(["--n", "x"])
    err = capsys.readouterr().err.splitlines()
    assert exc.value.code == 2 and err[0].startswith("usage: python -m rlvfast.train")
    assert err[-1] == "rlvfast.train: error: argument --n: invalid int value: 'x'"
