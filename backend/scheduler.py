"""Periodic retraining: every FOCUSCUT_RETRAIN_INTERVAL seconds, queue a fine-tuning job for each
project with at least FOCUSCUT_TRAIN_MIN_ANNOTATIONS new annotations and no job pending.

    python -m backend.scheduler [--once]

It only enqueues (through the same coalescing as the webhook), so running two schedulers, or a
scheduler beside a burst of webhooks, still gives one pending job per project. Redis down: the
round is skipped and retried at the next interval.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading

import redis

from . import fit_queue
from . import settings as settings_module

log = logging.getLogger("backend.scheduler")


def run_round(conn: redis.Redis, settings) -> list[dict]:
    """Request training for every known project; returns the outcomes that queued a job."""
    queued = []
    for raw in sorted(conn.smembers(fit_queue.key("projects"))):
        outcome = fit_queue.request_training(conn, raw.decode(), "SCHEDULED", settings)
        if outcome["status"] == "queued":
            log.info("project %s: %d new annotations, queued job %s",
                     outcome["project"], outcome["new_annotations"], outcome["job_id"])
            queued.append(outcome)
    return queued


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m backend.scheduler", description=__doc__.split("\n")[0])
    parser.add_argument("--once", action="store_true", help="run one round and exit")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    settings = settings_module.load()
    if not settings.redis_url:
        log.error("REDIS_URL is not set: there is no queue to schedule training on")
        return 2
    conn = fit_queue.connect(settings.redis_url)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    log.info("retraining every %.0f s (at least %d new annotations per project)",
             settings.retrain_interval, settings.train_min_annotations)
    while True:
        try:
            run_round(conn, settings)
        except (redis.RedisError, fit_queue.RedisUnavailable) as exc:
            log.warning("Redis is unreachable (%s): round skipped", exc)
        if args.once or stop.wait(settings.retrain_interval):
            return 0


if __name__ == "__main__":
    sys.exit(main())
