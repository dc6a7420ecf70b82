# shellcheck shell=bash
# Shell helpers shared by deploy/up and deploy/test. Sourced, not run: `. deploy/lib.sh`.
# Expects bash >= 5.1 and to be sourced from the repository root.

export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

say() { printf '==> %s\n' "$*"; }
warn() { printf '%s: warning: %s\n' "${0##*/}" "$*" >&2; }
die() {
    printf '%s: %s\n' "${0##*/}" "$*" >&2
    exit 1
}

is_root() { [ "$(id -u)" -eq 0 ]; }

# apt_install PACKAGE...: `apt-get update` then install, as root, non-interactively.
apt_install() {
    [ $# -gt 0 ] || return 0
    if ! is_root || ! command -v apt-get >/dev/null; then
        die "missing: $*. Run as root on Debian/Ubuntu to have them installed, or install them."
    fi
    say "installing $*"
    timeout 600 apt-get update -q
    DEBIAN_FRONTEND=noninteractive timeout 1200 apt-get install -y -q "$@"
}

# ensure_commands COMMAND:PACKAGE...: installs the packages whose command is missing, with a
# single `apt-get update`, and nothing at all when every command is there.
ensure_commands() {
    local spec missing=()
    for spec in "$@"; do
        command -v "${spec%%:*}" >/dev/null 2>&1 && continue
        [[ " ${missing[*]} " == *" ${spec#*:} "* ]] || missing+=("${spec#*:}")
    done
    apt_install "${missing[@]}"
}

# ensure_rust: cargo on PATH (rustup's default location is tried), plus what linking needs.
ensure_rust() {
    if ! command -v cargo >/dev/null && [ -f "$HOME/.cargo/env" ]; then
        # shellcheck disable=SC1091
        . "$HOME/.cargo/env"
    fi
    command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (https://rustup.rs)"
    # rustc links with `cc`, and the `ring` crate compiles C.
    ensure_commands cc:gcc
    [ -e /usr/include/stdio.h ] || apt_install libc6-dev
}

# cargo_target_dir: the folder cargo builds into, as cargo itself reports it: CARGO_TARGET_DIR,
# or a target-dir set in a .cargo/config.toml, or ./target. Call after ensure_rust.
cargo_target_dir() {
    local dir
    dir=$(cargo metadata --format-version 1 --no-deps 2>/dev/null |
        grep -o '"target_directory":"[^"]*"' | head -n 1 | cut -d'"' -f4) || true
    [ -n "$dir" ] || dir=$(realpath -m "${CARGO_TARGET_DIR:-target}")
    printf '%s\n' "$dir"
}

# port_busy PORT: true if something accepts connections on 127.0.0.1:PORT.
port_busy() { (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

PICKED_PORTS=" "
# free_port VAR PREFERRED [WHAT]: sets VAR to PREFERRED if nothing listens there, else to the
# next free port above it (saying so, for WHAT). A port handed out once is not handed out
# again by this shell.
free_port() {
    local port=$2
    while port_busy "$port" || [[ "$PICKED_PORTS" == *" $port "* ]]; do
        port=$((port + 1))
        [ "$port" -lt $(($2 + 200)) ] || die "no free port in $2..$port"
    done
    PICKED_PORTS+="$port "
    [ -z "${3:-}" ] || [ "$port" = "$2" ] || say "$3: port $2 is taken, using $port"
    printf -v "$1" '%s' "$port"
}

# --- processes ------------------------------------------------------------------------------
STARTED=() # pids, in start order; stop_all stops them in reverse
declare -A PROC_NAME=() PROC_LOG=() PROC_STOP_SIGNAL=()
LAST_PID=
# With NEW_SESSION=1 each process gets its own session, so a Ctrl-C in the terminal reaches
# only the script, which then stops everything in order (deploy/up). Without it, they stay in
# the caller's process group, so a `timeout` that kills the group kills them too (deploy/test).
NEW_SESSION=${NEW_SESSION:-0}
STOP_TIMEOUT=${STOP_TIMEOUT:-30}

# start_proc NAME LOG COMMAND...: starts COMMAND in the background, output to LOG; sets LAST_PID.
# stop_all stops it with SIGTERM, or with PROC_STOP_SIGNAL[$LAST_PID] when set.
start_proc() {
    local name=$1 log=$2
    shift 2
    if [ "$NEW_SESSION" = 1 ]; then
        setsid "$@" >"$log" 2>&1 </dev/null &
    else
        "$@" >"$log" 2>&1 </dev/null &
    fi
    LAST_PID=$!
    STARTED+=("$LAST_PID")
    PROC_NAME[$LAST_PID]=$name
    PROC_LOG[$LAST_PID]=$log
}

# forget_proc PID: drops a process that has already been waited for from STARTED.
forget_proc() {
    local p kept=()
    for p in "${STARTED[@]}"; do [ "$p" = "$1" ] || kept+=("$p"); done
    STARTED=("${kept[@]}")
}

show_log() {
    warn "last lines of ${PROC_LOG[$1]}:"
    tail -n 20 "${PROC_LOG[$1]}" | sed 's/^/    /' >&2
}

# wait_healthy PID URL SECONDS: polls URL until it answers 2xx, for at most SECONDS; fails at
# once if the process exits.
wait_healthy() {
    local pid=$1 url=$2 limit=$3
    local deadline=$((SECONDS + limit))
    while :; do
        if ! kill -0 "$pid" 2>/dev/null; then
            warn "${PROC_NAME[$pid]} exited while starting"
            show_log "$pid"
            return 1
        fi
        curl -fsS --max-time 2 -o /dev/null "$url" 2>/dev/null && return 0
        if [ "$SECONDS" -ge "$deadline" ]; then
            warn "${PROC_NAME[$pid]} did not answer $url within ${limit}s"
            show_log "$pid"
            return 1
        fi
        sleep 0.2 # poll interval
    done
}

# stop_all: SIGTERM to each started process, newest first, waiting up to STOP_TIMEOUT seconds
# for each (their graceful shutdown) before SIGKILL.
stop_all() {
    local i pid status
    for ((i = ${#STARTED[@]} - 1; i >= 0; i--)); do
        pid=${STARTED[i]}
        if kill -"${PROC_STOP_SIGNAL[$pid]:-TERM}" "$pid" 2>/dev/null &&
            ! timeout "$STOP_TIMEOUT" tail --pid="$pid" -s 0.1 -f /dev/null; then
            warn "${PROC_NAME[$pid]} did not stop within ${STOP_TIMEOUT}s: killing it"
            kill -KILL "$pid" 2>/dev/null || true
        fi
        status=0
        wait "$pid" 2>/dev/null || status=$?
        say "stopped ${PROC_NAME[$pid]} (exit status $status)"
    done
    STARTED=()
}

# new_keys DIR: an Ed25519 key pair for tokens (DIR/signing.pem, DIR/verify.pem), kept if there.
new_keys() {
    mkdir -p "$1"
    if [ ! -s "$1/signing.pem" ]; then
        (umask 077 && openssl genpkey -algorithm ed25519 -out "$1/signing.pem")
        rm -f "$1/verify.pem"
    fi
    [ -s "$1/verify.pem" ] || openssl pkey -in "$1/signing.pem" -pubout -out "$1/verify.pem"
}
