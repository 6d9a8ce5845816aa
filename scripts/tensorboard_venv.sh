#!/usr/bin/env bash
# A Python with the tensorboard package, for the test that reads our event files with TensorBoard's own reader:
# a venv in .build/tensorboard-venv (made once; needs python3-venv and PyPI). Prints the venv's python.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=.build/tensorboard-venv
if ! "$venv/bin/python" -c "import tensorboard" 2>/dev/null; then
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet tensorboard >&2
fi
echo "$PWD/$venv/bin/python"
