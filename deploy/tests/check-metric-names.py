#!/usr/bin/env python3
"""Checks that running Phasecast processes export every metric the dashboard and alerts use.

usage: check-metric-names.py URL [URL...]     e.g. http://127.0.0.1:9090/metrics

Reads every PromQL expression in deploy/grafana/phasecast.json (panel targets) and
deploy/prometheus/alerts.yml, takes the metric names out of them (not functions, keywords,
labels, Grafana variables or `up`, which Prometheus makes itself), fetches each URL once and
fails, listing them, if a name is exported by none of them. Names are compared exactly:
`x_bucket` is only there when `x` is exported as a histogram, not as a summary.
Standard library only, so it runs wherever python3 does.
"""

import json
import re
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/phasecast.json"
ALERTS = ROOT / "deploy/prometheus/alerts.yml"

KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "atan2",
}
# Series Prometheus itself attaches to every target.
SYNTHETIC = {"up", "scrape_duration_seconds", "scrape_samples_scraped",
             "scrape_samples_post_metric_relabeling", "scrape_series_added"}
SUFFIXES = ("_bucket", "_sum", "_count")


def dashboard_exprs(path):
    exprs = []

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(json.loads(path.read_text()))
    return exprs


def alert_exprs(path):
    text = path.read_text()
    try:
        import yaml  # type: ignore
    except ImportError:
        return _alert_exprs_plain(text)
    exprs = []
    for group in yaml.safe_load(text).get("groups", []):
        exprs.extend(rule["expr"] for rule in group.get("rules", []) if "expr" in rule)
    return [str(e) for e in exprs]


def _alert_exprs_plain(text):
    """`expr:` values of a rules file without PyYAML: inline scalars and `|`/`>` blocks."""
    exprs = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = re.match(r"^(\s*)(?:-\s+)?expr:\s*(.*?)\s*$", lines[i])
        i += 1
        if not m:
            continue
        indent, value = len(m.group(1)), m.group(2)
        if re.fullmatch(r"[|>][+-]?", value):
            block = []
            while i < len(lines) and (not lines[i].strip()
                                      or len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i].strip())
                i += 1
            exprs.append(" ".join(block))
        elif value[:1] in "'\"":
            exprs.append(value[1:-1])
        else:
            exprs.append(value)
    return exprs


def metric_names(expr):
    """Metric names in a PromQL expression."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)  # strings
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # ranges and subqueries
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for m in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", e):
        name = m.group(0)
        if re.match(r"\s*\(", e[m.end():]):  # a function call
            continue
        if name.lower() in KEYWORDS or name in SYNTHETIC:
            continue
        names.add(name)
    return names


def exported_names(url):
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode("utf-8", "replace")
    names, types = set(), {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            parts = line.split()
            if len(parts) >= 4:
                types[parts[2]] = parts[3]
        elif line and not line.startswith("#"):
            m = re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line)
            if m:
                names.add(m.group(0))
    return names, types


def main(urls):
    if not urls:
        print(__doc__.strip().splitlines()[2], file=sys.stderr)
        return 2
    used = {}
    for source, exprs in ((DASHBOARD, dashboard_exprs(DASHBOARD)), (ALERTS, alert_exprs(ALERTS))):
        if not exprs:
            print(f"no expressions found in {source}", file=sys.stderr)
            return 2
        for expr in exprs:
            for name in metric_names(expr):
                used.setdefault(name, set()).add(source.relative_to(ROOT).as_posix())

    exported, types, failed_urls = {}, {}, []
    for url in urls:
        try:
            names, url_types = exported_names(url)
        except OSError as err:
            print(f"FAIL  cannot fetch {url}: {err}")
            failed_urls.append(url)
            continue
        print(f"fetched {url}: {len(names)} metric names")
        for name in names:
            exported.setdefault(name, []).append(url)
        types.update(url_types)

    missing = []
    print(f"checking {len(used)} metric names used by the dashboard and the alert rules:")
    for name in sorted(used):
        where = ", ".join(sorted(used[name]))
        if name in exported:
            print(f"  ok       {name}  ({where})")
            continue
        hint = ""
        base = next((name[: -len(s)] for s in SUFFIXES if name.endswith(s)), name)
        if base != name and types.get(base) == "summary":
            hint = f"; {base} is exported as a summary, not a histogram: give it buckets"
        elif base != name and types.get(base):
            hint = f"; {base} is exported as a {types[base]}"
        print(f"  MISSING  {name}  ({where}){hint}")
        missing.append(name)

    if missing or failed_urls:
        print(f"FAIL  {len(missing)} of {len(used)} names are exported by none of: {' '.join(urls)}"
              + (f"; {len(failed_urls)} URL(s) unreachable" if failed_urls else ""))
        return 1
    print(f"ok    all {len(used)} names are exported")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
