#!/usr/bin/env bash
# Fetches, HERE (where pip reaches the registry), the wheels the device check installs THERE (the
# H200 machine has no network and lacks these; its image has torch 2.11, triton 3.6, sympy,
# transformers, pytest-benchmark): math-verify and its LaTeX parser (the trainer's grader) and
# liger-kernel (the loss comparison). Pure-Python wheels for CPython 3.12, ~1.3 MB in all, into
# bench/gpu/wheels/ (git-ignored; name it in the run tool's `carry`). --no-deps: each dependency
# is named here, one version each (two versions of one package stop the install there).
set -euo pipefail
cd "$(dirname "$0")"
mkdir -p wheels
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d wheels math-verify==0.9.0 latex2sympy2_extended==1.11.0 antlr4-python3-runtime==4.13.2 liger-kernel==0.8.5
ls -l wheels
du -sh wheels
