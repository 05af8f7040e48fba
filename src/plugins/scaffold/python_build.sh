#!/usr/bin/env bash
# Builds {{name}}.wasm from app.py (componentize-py 0.25.1 from PyPI).
set -euo pipefail
cd "$(dirname "$0")"
command -v componentize-py >/dev/null || python3 -m pip install componentize-py==0.25.1
componentize-py -d wit -w filter-plugin componentize -p . app -o {{name}}.wasm
