#!/usr/bin/env bash
# Static checks of everything in deploy/: Prometheus config, alert rules and their unit tests
# (promtool), the Grafana dashboard (JSON, and its PromQL through promtool), the nginx template
# rendered for two gateways (nginx -t), the nats-server configs (nats-server -t), the systemd
# units and the drop-in for Debian's nats-server unit (systemd-analyze verify, where it
# exists) and the example configs (TOML, every key commented, agreeing with the units).
# Needs promtool (Debian package `prometheus`), nginx and python3. Exits non-zero
# if any check fails. The live check, that running processes export the metrics used here,
# is check-metric-names.py (run by deploy/test).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/sbin:/sbin"

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
passed=0 failed=0 skipped=0

# check DESCRIPTION COMMAND...: runs COMMAND, shows its output only when it fails.
# (errexit does not apply inside COMMAND here, so the functions below return on each error.)
check() {
    local what=$1
    shift
    if out=$("$@" 2>&1); then
        echo "ok    $what"
        passed=$((passed + 1))
    else
        echo "FAIL  $what"
        while IFS= read -r line; do echo "      $line"; done <<<"$out"
        failed=$((failed + 1))
    fi
}

need() {
    command -v "$1" >/dev/null || { echo "FAIL  $1 is not installed ($2)"; failed=$((failed + 1)); return 1; }
}

# --- Prometheus -----------------------------------------------------------------------------
if need promtool "apt-get install prometheus"; then
    check "promtool check config deploy/prometheus/prometheus.yml" \
        promtool check config deploy/prometheus/prometheus.yml
    check "promtool check rules deploy/prometheus/alerts.yml" \
        promtool check rules deploy/prometheus/alerts.yml
    check "promtool test rules deploy/prometheus/alerts.test.yml (every alert fires and stays quiet)" \
        promtool test rules deploy/prometheus/alerts.test.yml
fi

# --- Grafana --------------------------------------------------------------------------------
check "deploy/grafana/phasecast.json is valid JSON" \
    python3 -m json.tool deploy/grafana/phasecast.json
# Every panel query as a recording rule, with Grafana's variables given values, so that
# promtool parses the PromQL; and every datasource is the ${DS_PROMETHEUS} variable.
dashboard_rules() {
    python3 - "$tmp/dashboard-rules.yml" <<'PY' || return 1
import json, sys
dash = json.load(open("deploy/grafana/phasecast.json"))
exprs, bad = [], []
def walk(node, path):
    if isinstance(node, dict):
        ds = node.get("datasource")
        if isinstance(ds, dict) and ds.get("type") == "prometheus" and ds.get("uid") != "${DS_PROMETHEUS}":
            bad.append(f"{path}: datasource {ds}")
        if isinstance(node.get("expr"), str):
            exprs.append(node["expr"])
        for k, v in node.items():
            walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            walk(v, f"{path}[{i}]")
walk(dash, "")
if bad or not exprs:
    sys.exit("\n".join(bad) or "no queries in the dashboard")
subst = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h", "$gateway": ".*", "$engine": ".*"}
with open(sys.argv[1], "w") as f:
    f.write("groups:\n  - name: dashboard\n    rules:\n")
    for i, e in enumerate(exprs):
        for k, v in subst.items():
            e = e.replace(k, v)
        if "$" in e:
            sys.exit(f"unknown Grafana variable in: {e}")
        f.write(f"      - record: dashboard:query{i}\n        expr: {json.dumps(e)}\n")
print(f"{len(exprs)} queries")
PY
    promtool check rules "$tmp/dashboard-rules.yml"
}
if command -v promtool >/dev/null; then
    check "dashboard queries are valid PromQL and use the \${DS_PROMETHEUS} datasource" dashboard_rules
fi

# --- nginx ----------------------------------------------------------------------------------
nginx_test() {
    local web_root=web/public
    [ -d "$web_root" ] || { web_root=$tmp/www; mkdir -p "$web_root"; }
    deploy/nginx/render "$tmp/nginx" 127.0.0.1:8000 "$PWD/$web_root" 60s \
        127.0.0.1:8080 127.0.0.1:8081 >"$tmp/nginx.conf" || return 1
    if grep -v '^[[:space:]]*#' "$tmp/nginx.conf" | grep '{{'; then
        echo "placeholders left unrendered"
        return 1
    fi
    nginx -t -p "$tmp/nginx" -c "$tmp/nginx.conf" -e "$tmp/nginx/error.log"
}
# The same with HTTPS and HTTP/2 (render's TLS_LISTEN), on a throwaway self-signed certificate,
# as deploy/up --https serves it (HTTPS only: LISTEN is -).
nginx_tls_test() {
    local web_root=web/public
    [ -d "$web_root" ] || { web_root=$tmp/www; mkdir -p "$web_root"; }
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
        -subj /CN=localhost -keyout "$tmp/tls.key" -out "$tmp/tls.crt" 2>&1 || return 1
    TLS_LISTEN=127.0.0.1:8443 TLS_CERT=$tmp/tls.crt TLS_KEY=$tmp/tls.key \
        deploy/nginx/render "$tmp/nginx-tls" - "$PWD/$web_root" 60s 127.0.0.1:8080 >"$tmp/nginx-tls.conf" || return 1
    grep -Eq 'listen 127\.0\.0\.1:8443 ssl( http2)?;' "$tmp/nginx-tls.conf" || { echo "no TLS listener rendered"; return 1; }
    grep -Eq 'listen 127\.0\.0\.1:8443 ssl http2;|http2 on;' "$tmp/nginx-tls.conf" || { echo "HTTP/2 is not on"; return 1; }
    nginx -t -p "$tmp/nginx-tls" -c "$tmp/nginx-tls.conf" -e "$tmp/nginx-tls/error.log"
}
# Tokens travel in room streams' query strings: the access log format must not log the query
# ($request, $request_uri, $args, $query_string) or credentials (Authorization, Cookie).
nginx_log_format() {
    local fmt
    fmt=$(deploy/nginx/render "$tmp/nginx-log" 127.0.0.1:8000 "$tmp" 60s 127.0.0.1:8080 |
        awk '/log_format/,/;/') || return 1
    [ -n "$fmt" ] || { echo "no log_format"; return 1; }
    if grep -Eo '\$(request|request_uri|args|arg_[a-z_]+|query_string|http_authorization|http_cookie|cookie_[a-z_]+|http_referer)\b' <<<"$fmt"; then
        echo "the access log format above logs a query string or a credential"
        return 1
    fi
}
if need nginx "apt-get install nginx"; then
    check "deploy/nginx renders (2 gateways) and passes nginx -t" nginx_test
    check "deploy/nginx renders with HTTPS + HTTP/2 (TLS_LISTEN) and passes nginx -t" nginx_tls_test
    check "nginx's access log format names no query string and no credential" nginx_log_format
fi

# --- systemd --------------------------------------------------------------------------------
# Until the binaries are installed, verify copies whose ExecStart runs /bin/true with the same
# arguments: everything else in the unit is checked as written. Warnings (an unknown or
# misspelt key is only a warning to systemd) count as failures.
systemd_verify() {
    local unit bin dir=$tmp/systemd
    mkdir -p "$dir" || return 1
    for unit in deploy/systemd/*.service; do
        bin=$(sed -n 's/^ExecStart=\([^ ]*\).*/\1/p' "$unit")
        if [ -x "$bin" ]; then
            cp "$unit" "$dir/"
        else
            echo "($bin is not installed: verifying $(basename "$unit") with ExecStart=/bin/true)"
            sed "s#^ExecStart=[^ ]*#ExecStart=/bin/true#" "$unit" >"$dir/$(basename "$unit")" || return 1
        fi
    done
    local out
    out=$(cd "$dir" && systemd-analyze verify ./*.service 2>&1) || { echo "$out"; return 1; }
    [ -z "$out" ] || { echo "$out"; return 1; }
}
if command -v systemd-analyze >/dev/null; then
    check "systemd-analyze verify deploy/systemd/*.service" systemd_verify
else
    echo "SKIP  systemd-analyze verify deploy/systemd/*.service: systemd-analyze is not installed here"
    skipped=$((skipped + 1))
fi

# Debian's own nats-server unit with our lame-duck drop-in beside it (systemd finds drop-ins
# along SYSTEMD_UNIT_PATH): any warning about the drop-in's keys fails.
nats_unit_verify() {
    local dir=$tmp/nats-unit out
    mkdir -p "$dir" || return 1
    cp /lib/systemd/system/nats-server.service "$dir/" || return 1
    cp -r deploy/systemd/nats-server.service.d "$dir/" || return 1
    out=$(cd "$dir" && SYSTEMD_UNIT_PATH="$dir:" systemd-analyze verify nats-server.service 2>&1) \
        || { echo "$out"; return 1; }
    [ -z "$out" ] || { echo "$out"; return 1; }
}
if command -v systemd-analyze >/dev/null && [ -f /lib/systemd/system/nats-server.service ]; then
    check "systemd-analyze verify nats-server.service with deploy/systemd/nats-server.service.d" nats_unit_verify
else
    echo "SKIP  nats-server.service with its lame-duck drop-in: systemd-analyze or Debian's nats-server unit is not here"
    skipped=$((skipped + 1))
fi

# --- nats-server ----------------------------------------------------------------------------
# The single-server and cluster configs parse, with every key known to this nats-server.
if need nats-server "apt-get install nats-server"; then
    for conf in deploy/nats/*.conf; do
        check "nats-server -t -c $conf" nats-server -t -c "$conf"
    done
fi

# --- example configs ------------------------------------------------------------------------
configs_check() {
    python3 - <<'PY'
import re, sys
try:
    from tomllib import load as toml_load
except ImportError:  # python < 3.11: enough TOML for these flat files
    import ast
    def toml_load(f):
        doc = section = {}
        for raw in f.read().decode().splitlines():
            line = raw.split(" #")[0].strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("["):
                section = doc.setdefault(line.strip("[]"), {})
                continue
            key, value = (part.strip() for part in line.split("=", 1))
            section[key] = ast.literal_eval(value.replace("true", "True").replace("false", "False"))
        return doc
errors = []
def units(path):
    keys = {}
    for line in open(path):
        m = re.match(r"^(\w+)=(.*)$", line.strip())
        if m:
            keys.setdefault(m.group(1), m.group(2))
    return keys
def seconds(text):
    m = re.fullmatch(r"(\d+)(ms|s|min|m|h)?", text.strip())
    if not m:
        errors.append(f"cannot read duration {text!r}")
        return 0
    return int(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "min": 60, "m": 60, "h": 3600}[m.group(2)]
for name, section in (("engine", "engine"), ("gateway", "gateway")):
    path = f"deploy/config/{name}.toml"
    config = toml_load(open(path, "rb"))
    lines = open(path).read().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^\s*[A-Za-z_]+\s*=", line) and not (i and lines[i - 1].lstrip().startswith("#")):
            errors.append(f"{path}:{i + 1}: key without a comment above it: {line.strip()}")
    unit = units(f"deploy/systemd/phasecast-{name}.service")
    grace = seconds(config[section]["shutdown_grace"])
    stop = seconds(unit.get("TimeoutStopSec", "90s"))
    if stop <= grace:
        errors.append(f"phasecast-{name}.service: TimeoutStopSec={stop}s is not above {section}.shutdown_grace={grace}s")
    if name == "gateway":
        limit = int(unit.get("LimitNOFILE", "0"))
        if limit <= config["gateway"]["max_connections"]:
            errors.append(f"LimitNOFILE={limit} is not above gateway.max_connections")
    if not unit.get("ExecStart", "").endswith(f"--config /etc/phasecast/{name}.toml"):
        errors.append(f"phasecast-{name}.service does not run with --config /etc/phasecast/{name}.toml")
sys.exit("\n".join(errors) or None)
PY
}
check "deploy/config/*.toml parse, every key is commented, units' stop timeout > grace, LimitNOFILE > max_connections" configs_check

echo "check-deploy: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]
