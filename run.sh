#!/usr/bin/env bash
# The two set-up commands of the README:
#   ./run.sh serve [weft serve options]   build the editor if needed, then run the server (release)
#   ./run.sh test                          run the whole test suite
#   ./run.sh comfy-frontend [options]      the same server with ComfyUI's own web frontend
#                                          (comfyui-frontend-package from PyPI, fetched once)
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

# ComfyUI's official frontend: the `comfyui-frontend-package` wheel from PyPI, unpacked once into
# a cache folder; prints the folder of its static files. WEFT_COMFY_FRONTEND_VERSION picks the
# version (the one the browser test pins by default); an argument picks another.
COMFY_FRONTEND_VERSION="${WEFT_COMFY_FRONTEND_VERSION:-1.58.1}"
# The early-2025 frontend the browser tests also run (users who have not updated theirs).
COMFY_FRONTEND_EARLY_VERSION=1.12.14
comfy_frontend() {
    local version="${1:-$COMFY_FRONTEND_VERSION}"
    local dir="${XDG_CACHE_HOME:-$HOME/.cache}/weft/comfyui-frontend/$version"
    if [ ! -f "$dir/static/index.html" ]; then
        command -v python3 >/dev/null 2>&1 || { echo "python3 (with pip) is needed to fetch the ComfyUI frontend" >&2; exit 1; }
        local tmp
        tmp="$(mktemp -d)"
        python3 -m pip download --quiet --no-deps --only-binary=:all: \
            "comfyui-frontend-package==$version" -d "$tmp" >&2
        rm -rf "$dir.partial" && mkdir -p "$dir.partial"
        python3 -m zipfile -e "$tmp"/comfyui_frontend_package-*.whl "$dir.partial"
        rm -rf "$dir" && mkdir -p "$dir"
        mv "$dir.partial/comfyui_frontend_package/static" "$dir/static"
        rm -rf "$dir.partial" "$tmp"
    fi
    echo "$dir/static"
}

# Exports variable $1 as the static folder of frontend version $2 unless it is set already; says
# why the browser test is skipped when the frontend cannot be fetched.
fetch_frontend() {
    local variable="$1" version="$2" static
    [ -n "${!variable:-}" ] && return 0
    if ! python3 -m pip --version >/dev/null 2>&1; then
        echo "note: python3 with pip is not installed, so ComfyUI's frontend $version is not fetched and its browser test is skipped" >&2
        return 0
    fi
    static="$(comfy_frontend "$version" || true)"
    if [ -f "$static/index.html" ]; then
        export "$variable=$static"
    else
        echo "note: could not fetch ComfyUI's frontend $version from PyPI; its browser test is skipped" >&2
    fi
}

case "${1:-}" in
    comfy-frontend)
        shift
        static="$(comfy_frontend)"
        exec cargo run --release --locked -- serve --web-root "$static" "$@"
        ;;
    comfy-frontend-path)
        comfy_frontend "${2:-}"
        ;;
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
            # ComfyUI's own frontend, newest pinned and early-2025, for the browser tests that run
            # them against Weft (each skipped without it).
            fetch_frontend WEFT_COMFY_FRONTEND "$COMFY_FRONTEND_VERSION"
            fetch_frontend WEFT_COMFY_FRONTEND_EARLY "$COMFY_FRONTEND_EARLY_VERSION"
            WEFT_BIN="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)/debug/weft" npm --prefix web run e2e
        fi
        ;;
    *)
        echo "usage: ./run.sh serve [options] | ./run.sh test | ./run.sh comfy-frontend [options]" >&2
        exit 2
        ;;
esac
