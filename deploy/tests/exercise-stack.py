#!/usr/bin/env python3
"""Puts a little traffic through a running gateway, so that the metrics a quiet process has
not recorded yet (latency histograms, per-result counters) exist before they are checked.

usage: exercise-stack.py GATEWAY_URL        e.g. http://127.0.0.1:8080

Opens the lobby stream, creates a private 3-player room with short phases, joins it three
times, opens a player's room stream, starts the game, chats, watches the phases advance (so
the engine's scheduler fires deadlines), and makes one request with a bad token. Best effort:
each failure is printed and the rest goes on; the exit status is 0 unless nothing worked.
It does not test the API (the integration tests do); check-metric-names.py is the assertion.
Standard library only.
"""

import json
import sys
import time
import urllib.error
import urllib.request

TIMEOUT = 5


def request(base, method, path, body=None, token=None, expect_status=None):
    """Sends a JSON request; returns (status, parsed body). Raises on an unexpected status
    (any 4xx/5xx, unless it is `expect_status`)."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as err:
        if err.code != expect_status:
            raise
        return err.code, err.read().decode("utf-8", "replace")


def read_events(base, path, until, seconds):
    """Reads an SSE stream until `until(events)` is true or `seconds` pass; returns the events."""
    events, name = [], None
    deadline = time.monotonic() + seconds
    req = urllib.request.Request(base + path, headers={"Accept": "text/event-stream"})
    with urllib.request.urlopen(req, timeout=max(1.0, seconds)) as response:
        while time.monotonic() < deadline:
            line = response.readline()
            if not line:
                break
            line = line.decode("utf-8", "replace").rstrip("\n")
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line == "" and name:
                events.append(name)
                name = None
                if until(events):
                    break
    return events


def main(argv):
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[3], file=sys.stderr)
        return 2
    base = argv[0].rstrip("/")
    worked = 0

    def step(what, fn):
        nonlocal worked
        try:
            result = fn()
            shown = str(result)
            print(f"exercise: {what}: {shown[:100]}{'...' if len(shown) > 100 else ''}")
            worked += 1
            return result
        except Exception as err:  # noqa: BLE001 - best effort, reported
            print(f"exercise: {what} FAILED: {err!r}")
            return None

    step("lobby stream", lambda: read_events(base, "/v1/lobby/events", lambda e: len(e) >= 1, 3))

    durations = {k: 250 for k in ("day_intro", "notice", "day_per_player", "vote",
                                  "vote_result", "night_intro", "night", "ended")}
    created = step("create room", lambda: request(base, "POST", "/v1/rooms", {
        "title": "metrics check", "total": 3, "mafia": 1, "doctor": 0, "police": 0,
        "private": True, "durations_ms": durations}))
    code = created[1].get("code") if created and isinstance(created[1], dict) else None
    if not code:
        print("exercise: no room code, skipping the room")
    else:
        tokens = []
        for name in ("ann", "bob", "cy"):
            joined = step(f"join {name}", lambda name=name: request(
                base, "POST", f"/v1/rooms/{code}/join", {"name": name}))
            if joined and isinstance(joined[1], dict) and joined[1].get("token"):
                tokens.append(joined[1]["token"])
        if tokens:
            host = tokens[0]
            step("room stream", lambda: read_events(
                base, f"/v1/rooms/{code}/events?token={host}", lambda e: len(e) >= 1, 3))
            step("chat", lambda: request(base, "POST", f"/v1/rooms/{code}/commands",
                                         {"type": "chat", "text": "hello"}, host))
            step("start", lambda: request(base, "POST", f"/v1/rooms/{code}/commands",
                                          {"type": "start"}, host))
            step("phases", lambda: read_events(
                base, f"/v1/rooms/{code}/events?token={host}",
                lambda e: e.count("phase") >= 3, 5))
    # On a room that exists, so that the token (not the code) is what gets refused.
    step("bad token", lambda: request(base, "POST", f"/v1/rooms/{code or 'AAAAAAAAAA'}/commands",
                                      {"type": "chat", "text": "x"}, "not-a-token",
                                      expect_status=401))
    return 0 if worked else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
