"""`python -m rlvfast.train`: the RL^V training job (not built yet)."""
import sys

if __name__ == "__main__":
    print("rlvfast.train: not yet implemented (see issue 5); nothing was trained", file=sys.stderr)
    sys.exit(2)
