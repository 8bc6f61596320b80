"""Process facts from /proc for the hardening tests and the load test: a gunicorn master's
worker pids, a process's resident memory; and ``record`` for the figures a test reports.

``record(name, figures)`` prints one line and, when FOCUSCUT_FIGURES names a file, appends the
figures to it as one JSON line (docs/hardening.md is built from those lines).
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def children(pid: int) -> set[int]:
    """Pids whose parent is ``pid`` (gunicorn: the master's workers)."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MiB (VmRSS)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise ValueError(f"no VmRSS for {pid}")


def record(name: str, figures: dict) -> None:
    print(f"FIGURE {name}: {json.dumps(figures)}")
    target = os.environ.get("FOCUSCUT_FIGURES")
    if target:
        with open(target, "a") as fh:
            fh.write(json.dumps({"check": name, **figures}) + "\n")
