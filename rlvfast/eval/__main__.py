"""`python -m rlvfast.eval`: see `rlvfast.eval.run` (and `--help`)."""
import sys

from rlvfast.eval.run import command

sys.exit(command())
