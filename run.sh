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
            (cd web && npm ci --no-audit --no-fund && npm test)
            if [ -x web/scripts/e2e.sh ]; then
                cargo build --locked
                WEFT_BIN="$PWD/${CARGO_TARGET_DIR:-target}/debug/weft" web/scripts/e2e.sh
            fi
        fi
        ;;
    *)
        echo "usage: ./run.sh serve [options] | ./run.sh test" >&2
        exit 2
        ;;
esac
