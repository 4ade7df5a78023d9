#!/usr/bin/env bash
# The two set-up commands of the README:
#   ./run.sh serve [weft serve options]   build the editor if needed, then run the server (release)
#   ./run.sh test                          run the whole test suite
set -euo pipefail
cd "$(dirname "$0")"

build_editor() {
    if [ -x web/scripts/ensure-built.sh ]; then
        if command -v npm >/dev/null 2>&1; then
            web/scripts/ensure-built.sh
        else
            echo "note: npm is not installed, so the editor cannot be built; the API still works" >&2
        fi
    fi
}

case "${1:-}" in
    serve)
        shift
        build_editor
        exec cargo run --release --locked -- serve --web-root web/dist "$@"
        ;;
    test)
        shift
        cargo test --locked "$@"
        if [ -f web/package.json ] && [ -z "${WEFT_SKIP_WEB_TESTS:-}" ]; then
            # The editor: unit tests, the production build, then browser tests against the real
            # server binary the cargo tests just built.
            (cd web && npm ci --no-audit --no-fund && npm test && npm run build)
            WEFT_BIN="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/weft" npm --prefix web run e2e
        fi
        ;;
    *)
        echo "usage: ./run.sh serve [options] | ./run.sh test" >&2
        exit 2
        ;;
esac
