"""`python -m rlvfast.train`: see `rlvfast.train.loop` (and `--help`)."""
import sys

from rlvfast.train.loop import main

sys.exit(main())
