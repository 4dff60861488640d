#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Fills the ignored folder .deps/ with what the GPU machine lacks and cannot download (it has no
# network): Catch2's single header. Run on a machine with Debian's catch2 package.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
mkdir -p "$root/.deps/include/catch2"
cp /usr/include/catch2/catch.hpp "$root/.deps/include/catch2/"
echo "prepared $root/.deps/include"
