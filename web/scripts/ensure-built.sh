#!/usr/bin/env sh
# Builds the editor (web/dist) only when it is missing or older than its sources:
# `npm ci` (when node_modules is missing or older than package-lock.json) and `npm run build`.
# Usage: web/scripts/ensure-built.sh   (from any directory)
set -eu
cd "$(dirname "$0")/.."

stamp=dist/index.html
needs_build=0
if [ ! -f "$stamp" ]; then
  needs_build=1
elif [ -n "$(find src index.html package.json package-lock.json vite.config.ts tsconfig.json -newer "$stamp" -print 2>/dev/null | head -n 1)" ]; then
  needs_build=1
fi

if [ "$needs_build" -eq 0 ]; then
  echo "web: dist is up to date"
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "web: npm (Node.js 20.19+) is needed to build the editor" >&2
  exit 1
fi

if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "web: npm ci"
  npm ci --no-audit --no-fund
fi
echo "web: npm run build"
npm run build
