#!/usr/bin/env bash
# The test command: system packages, a release build of titan for the multi-process tests
# (they start real rank processes), then every unit and multi-process test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh --test-tools
swift build -c release --product titan
export TITAN_BIN="$PWD/.build/release/titan"
export OPENBLAS_NUM_THREADS=1
# Every test is XCTest; without Swift Testing the run ends on XCTest's own summary line.
swift test --disable-swift-testing "$@"
