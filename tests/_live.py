"""Helpers of the live (real Prefect + Triton) level-4 tests: waiting for an outcome, reading Prefect's events."""

from __future__ import annotations

import json
import time
import urllib.request

import pytest


def wait_for(what: str, fn, timeout: float = 150.0, poll_s: float = 1.0):
    """`fn()`'s first truthy value; the test fails after `timeout` seconds without one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (value := fn()):
            return value
        time.sleep(poll_s)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def prefect_events(api: str, name: str) -> list[dict]:
    """The events named `name` the Prefect server at `api` (…/api) holds."""
    req = urllib.request.Request(f"{api}/events/filter", method="POST", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"filter": {"event": {"name": [name]}}}).encode())
    return json.loads(urllib.request.urlopen(req, timeout=10).read())["events"]
