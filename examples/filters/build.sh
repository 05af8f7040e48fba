#!/usr/bin/env bash
# Builds the example filters written in other languages into WASI components:
#   python/app.py   -> OUT/min-level.wasm     (componentize-py 0.25.1, from PyPI)
#   js/filter.js    -> OUT/field-equals.wasm  (@bytecodealliance/componentize-js 0.23, npm)
# Usage: examples/filters/build.sh [OUT_DIR]   (default: plugins/)
# Installs the two toolchains if they are missing.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="$(mkdir -p "${1:-$root/plugins}" && cd "${1:-$root/plugins}" && pwd)"

if ! command -v componentize-py >/dev/null 2>&1 || [ "$(componentize-py --version 2>/dev/null)" != "componentize-py 0.25.1" ]; then
  python3 -m pip install --quiet componentize-py==0.25.1
fi
if [ ! -d "$here/js/node_modules/@bytecodealliance/componentize-js" ]; then
  (cd "$here/js" && npm ci --no-audit --no-fund --silent)
fi

# Build to a temporary name and rename, so a running server's hot reload never reads a
# half-written component.
componentize-py -d "$root/wit" -w filter-plugin componentize -p "$here/python" app -o "$out/.min-level.wasm.partial" >/dev/null
mv "$out/.min-level.wasm.partial" "$out/min-level.wasm"
node "$here/js/build.mjs" "$out/.field-equals.wasm.partial" >/dev/null
mv "$out/.field-equals.wasm.partial" "$out/field-equals.wasm"
echo "built $out/min-level.wasm and $out/field-equals.wasm"
