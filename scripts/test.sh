#!/usr/bin/env bash
# The test command: system packages, a release build of titan for the multi-process tests
# (they start real rank processes), then every unit and multi-process test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --test-tools
swift build -c release --product titan
export TITAN_BIN="$PWD/.build/release/titan"
export OPENBLAS_NUM_THREADS=1
# TensorBoard's reader for the event-file test; it skips (saying why) when this fails, CI requires it.
if python=$(scripts/tensorboard_venv.sh); then export TITAN_TENSORBOARD_PYTHON="$python"
else echo "test.sh: no tensorboard venv (needs python3-venv and PyPI): the TensorBoard reader test will skip" >&2; fi
# Every test is XCTest; without Swift Testing the run ends on XCTest's own summary line.
swift test --disable-swift-testing "$@"
