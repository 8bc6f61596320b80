"""Bounded load test on loopback: simulated annotators clicking against the deployed web command.

    python benchmarks/load_test.py [--annotators 8] [--duration 120] [--workers 2] [--threads 2] [--intra-threads 1]
                                   [--think 2.0] [--size 480x640] [--out benchmarks/results/load_test.json]

Starts a redis-server, a loopback "Label Studio" serving the task images, and
``scripts/launch web`` (gunicorn, WEB_CONCURRENCY workers x GUNICORN_THREADS threads: the command
line deployments run; each worker's torch / ONNX Runtime uses ``--intra-threads`` cores, OMP_NUM_THREADS).
Each annotator takes a task of its own (a new task id, so a new click
session), clicks on the object up to ``--clicks`` times (positive inside, negative outside; each
/predict carries every click so far, as Label Studio sends them), waiting ``--think`` seconds on
average (uniform 0.5x..1.5x) to look at each mask, then moves to the next task, until
``--duration`` seconds are over. Requests time out after 100 s (Label Studio's ML_TIMEOUT_PREDICT).

Reports p50/p95/max latency, errors (any answer but 200, or no answer), clicks per second, and
the RSS of every gunicorn worker sampled every second: its growth between the first and the last
quarter of the run after warm-up, and a least-squares slope in MiB per minute (a leak shows as a
steady climb). Worker pids are compared before and after (restarts). Prints a table, writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from image_server import image_server, png_bytes, sample_image  # noqa: E402
from ls_payloads import clicks_at, predict_body, task  # noqa: E402
from procs import children, rss_mb  # noqa: E402
from services import free_port, launched, redis_server, wait_for  # noqa: E402

PREDICT_TIMEOUT = 100.0  # Label Studio's ML_TIMEOUT_PREDICT


def click_plan(height: int, width: int, n: int, rng: random.Random) -> list[tuple[int, int, bool]]:
    """(row, col, positive) clicks: inside the centred ellipse of ``sample_image`` first, then
    alternating outside (negative) and inside (positive)."""
    plan = []
    for k in range(n):
        inside = k % 2 == 0
        angle = rng.uniform(0, 2 * np.pi)
        radius = rng.uniform(0.0, 0.7) if inside else rng.uniform(1.3, 1.8)
        r = height / 2 + radius * height / 4 * np.sin(angle)
        c = width / 2 + radius * width / 4 * np.cos(angle)
        plan.append((int(np.clip(r, 0, height - 1)), int(np.clip(c, 0, width - 1)), inside))
    return plan


class Annotator(threading.Thread):
    """One simulated annotator; ``records``: (start offset s, latency s, status or error name)."""

    def __init__(self, index: int, url: str, args, stop_at: float, t0: float):
        super().__init__(daemon=True)
        self.index, self.url, self.args, self.stop_at, self.t0 = index, url, args, stop_at, t0
        self.rng = random.Random(index)
        self.records: list[tuple[float, float, str]] = []

    def run(self):
        http = requests.Session()
        height, width = self.args.height, self.args.width
        task_id = 1000 * (self.index + 1)
        while time.monotonic() < self.stop_at:
            task_id += 1
            image = f"/data/upload/1/img{task_id % self.args.images}.png"
            plan = click_plan(height, width, self.args.clicks, self.rng)
            for n in range(1, len(plan) + 1):
                if time.monotonic() >= self.stop_at:
                    return
                body = predict_body([task(task_id, image)], clicks_at(plan[:n], height, width))
                start = time.monotonic()
                try:
                    resp = http.post(self.url + "/predict", json=body, timeout=PREDICT_TIMEOUT)
                    outcome = str(resp.status_code)
                    if resp.status_code == 200 and not resp.json()["results"]:
                        outcome = "empty"
                except requests.RequestException as exc:
                    outcome = type(exc).__name__
                self.records.append((start - self.t0, time.monotonic() - start, outcome))
                time.sleep(self.args.think * self.rng.uniform(0.5, 1.5))


def sample_rss(master: int, stop: threading.Event, samples: list, t0: float, seen: set):
    while not stop.is_set():
        for pid in children(master):
            seen.add(pid)
            try:
                samples.append((time.monotonic() - t0, pid, rss_mb(pid)))
            except (OSError, ValueError):
                pass
        stop.wait(1.0)


def memory_summary(samples: list) -> dict:
    """Per worker, after its warm-up (which ends at the first sample from which its RSS stays
    within 5 % of its final level: a worker loads the network and its runtime's buffers at its
    first requests, which may come late): RSS then and at the end, the growth between the first
    and last quarter of that window, and a least-squares slope (MiB per minute)."""
    out = {}
    for pid in sorted({p for _, p, _ in samples}):
        points = np.array([(t, mb) for t, p, mb in samples if p == pid])
        if len(points) < 8:
            continue
        final = float(np.median(points[-max(2, len(points) // 4):, 1]))
        settled = points[:, 1] >= 0.95 * final
        first = len(settled) - int(np.argmin(settled[::-1])) if not settled.all() else 0
        t, mb = points[first:, 0], points[first:, 1]
        if len(t) < 8:
            out[str(pid)] = {"warmup_end_s": round(float(points[first - 1, 0]), 1), "note": "warm-up until the end"}
            continue
        span = t[-1] - t[0]
        early, late = mb[t <= t[0] + span / 4], mb[t >= t[-1] - span / 4]
        out[str(pid)] = {"warmup_end_s": round(float(t[0]), 1), "window_s": round(float(span), 1),
                         "rss_start_mb": round(float(np.median(early)), 1), "rss_end_mb": round(float(np.median(late)), 1),
                         "growth_mb": round(float(np.median(late) - np.median(early)), 1),
                         "slope_mb_per_min": round(float(np.polyfit(t / 60.0, mb, 1)[0]), 2),
                         "rss_max_mb": round(float(mb.max()), 1)}
    return out


def print_memory(memory: dict) -> None:
    print(f"\n{'worker':>8} {'warm by s':>9} {'window s':>8} {'RSS start MiB':>14} {'RSS end MiB':>12} "
          f"{'growth MiB':>11} {'slope MiB/min':>14}")
    for pid, m in memory.items():
        print(f"{pid:>8} {m['warmup_end_s']:>9} {m.get('window_s', '-')!s:>8} {m.get('rss_start_mb', '-')!s:>14} "
              f"{m.get('rss_end_mb', '-')!s:>12} {m.get('growth_mb', '-')!s:>11} {m.get('slope_mb_per_min', '-')!s:>14}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--annotators", type=int, default=8)
    parser.add_argument("--duration", type=float, default=120.0)
    parser.add_argument("--workers", type=int, default=2, help="WEB_CONCURRENCY")
    parser.add_argument("--threads", type=int, default=2, help="GUNICORN_THREADS")
    parser.add_argument("--intra-threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", os.cpu_count())),
                        help="OMP_NUM_THREADS of each worker: the cores one network pass uses")
    parser.add_argument("--think", type=float, default=2.0, help="mean seconds between an answer and the next click")
    parser.add_argument("--clicks", type=int, default=6, help="clicks per object")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--size", default="480x640", help="HxW of the task images")
    parser.add_argument("--mode", default=os.environ.get("FOCUSCUT_MODE", "fast_pfs"))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "load_test.json")
    parser.add_argument("--summarise", type=Path, help="only recompute and print the memory summary of a result file")
    args = parser.parse_args(argv)
    if args.summarise:
        result = json.loads(args.summarise.read_text())
        result["memory"] = memory_summary(result["samples"])
        print_memory(result["memory"])
        args.summarise.write_text(json.dumps(result, indent=1))
        return 0
    args.height, args.width = (int(v) for v in args.size.split("x"))

    files = {f"/data/upload/1/img{i}.png": png_bytes(sample_image(args.height, args.width, seed=i))
             for i in range(args.images)}
    port, work = free_port(), Path(tempfile.mkdtemp(prefix="focuscut-load-"))
    with redis_server() as redis_url, image_server(files) as ls:
        env = {"PORT": str(port), "WEB_CONCURRENCY": str(args.workers), "GUNICORN_THREADS": str(args.threads),
               "OMP_NUM_THREADS": str(args.intra_threads),
               "REDIS_URL": redis_url, "LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": "load-test",
               "FOCUSCUT_MODE": args.mode, "FOCUSCUT_MODEL_DIR": str(work / "models"),
               "FOCUSCUT_CACHE_DIR": str(work / "images"), "FOCUSCUT_WEIGHTS": ""}
        url = f"http://127.0.0.1:{port}"
        with launched("web", env=env) as web:
            wait_for(lambda: requests.get(url + "/health", timeout=2).ok, 120, "gunicorn")
            master = web.proc.pid
            workers_before = children(master)
            t0 = time.monotonic()
            stop_at = t0 + args.duration
            samples, seen, stop = [], set(), threading.Event()
            sampler = threading.Thread(target=sample_rss, args=(master, stop, samples, t0, seen), daemon=True)
            sampler.start()
            annotators = [Annotator(i, url, args, stop_at, t0) for i in range(args.annotators)]
            for a in annotators:
                a.start()
            for a in annotators:
                a.join(args.duration + PREDICT_TIMEOUT + 30)
            wall = time.monotonic() - t0
            stop.set()
            sampler.join(5)
            tracebacks = web.log().count("Traceback")
    shutil.rmtree(work, ignore_errors=True)

    records = [r for a in annotators for r in a.records]
    latencies = np.array([lat for _, lat, outcome in records if outcome == "200"])
    errors = [outcome for _, _, outcome in records if outcome != "200"]
    memory = memory_summary(samples)
    summary = {
        "annotators": args.annotators, "duration_s": args.duration, "wall_s": round(wall, 1),
        "workers": args.workers, "threads": args.threads, "intra_threads": args.intra_threads, "mode": args.mode, "image": args.size,
        "think_s": args.think, "clicks_per_object": args.clicks,
        "requests": len(records), "ok": int(len(latencies)), "errors": len(errors),
        "error_kinds": {e: errors.count(e) for e in sorted(set(errors))},
        "clicks_per_s": round(len(records) / wall, 2),
        "p50_s": round(float(np.percentile(latencies, 50)), 2) if len(latencies) else None,
        "p95_s": round(float(np.percentile(latencies, 95)), 2) if len(latencies) else None,
        "max_s": round(float(latencies.max()), 2) if len(latencies) else None,
        "worker_restarts": len(seen - workers_before),  # any worker pid that was not there at the start
        "tracebacks_in_log": tracebacks, "memory": memory,
        "machine": platform.platform(), "cpu_count": os.cpu_count(), "load_avg_1m_at_end": os.getloadavg()[0],
    }
    print(f"\n{args.annotators} annotators x {args.duration:.0f} s, gunicorn {args.workers} workers x {args.threads} "
          f"threads x {args.intra_threads} intra-op threads, {args.mode}, {args.size} images, think {args.think:g} s")
    print(f"{'requests':>9} {'ok':>5} {'errors':>6} {'clicks/s':>8} {'p50 s':>7} {'p95 s':>7} {'max s':>7} {'restarts':>8}")
    print(f"{summary['requests']:>9} {summary['ok']:>5} {summary['errors']:>6} {summary['clicks_per_s']:>8} "
          f"{summary['p50_s']!s:>7} {summary['p95_s']!s:>7} {summary['max_s']!s:>7} {summary['worker_restarts']:>8}")
    print_memory(memory)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({**summary, "samples": samples, "records": records}, indent=1))
    print(f"\nwrote {args.out}")
    return 0 if not errors and summary["worker_restarts"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
