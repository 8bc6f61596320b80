"""Faults while serving, for real: a gunicorn worker SIGKILLed in the middle of a request, and
Redis (AOF on, as deployed) restarted while annotators click and a training job waits in the
queue. Each test records its figures (procs.record).

Faults of the fit worker are in test_hardening_fit_faults.py; a work horse SIGKILLed mid-job
(retried, then failed, nothing published) and an unwritable model directory are covered by
test_fit_worker.py, and are not repeated here.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
import time

import requests
from rq import Queue

from backend import fit_queue
from hostile_host import Body, Hang, hostile_host
from image_server import png_bytes, sample_image
from ls_payloads import clicks_at, predict_body, task
from procs import children, record
from services import free_port, gunicorn_server, redis_server

H, W = 60, 80
IMAGE = png_bytes(sample_image(H, W))
OK, SLOW = "/data/upload/1/ok.png", "/data/upload/1/slow.png"


def click(url: str, image: str = OK, task_id: int = 7, n: int = 1, timeout: float = 120) -> requests.Response:
    pixels = [(30, 40, True), (10, 10, False), (50, 70, False)][:n]
    return requests.post(url + "/predict", json=predict_body([task(task_id, image)], clicks_at(pixels, H, W)),
                         timeout=timeout)


def env_for(tmp_path, ls_url: str, **extra) -> dict:
    return {"LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": "t0ken", "REDIS_URL": "",
            "FOCUSCUT_CACHE_DIR": str(tmp_path / "images"), "FOCUSCUT_MODEL_DIR": str(tmp_path / "models"),
            "FOCUSCUT_FETCH_TIMEOUT": "20", "OMP_NUM_THREADS": "1", "FOCUSCUT_WEIGHTS": "", **extra}


def test_worker_killed_mid_request_fails_that_request_only(tmp_path):
    with hostile_host({OK: Body(IMAGE), SLOW: Hang(6)}) as ls, \
            gunicorn_server(env=env_for(tmp_path, ls.url), workers=1, threads=2) as g:
        assert click(g.url).status_code == 200
        victim, = children(g.proc.pid)
        outcome = {}

        def in_flight():
            try:
                outcome["status"] = click(g.url, SLOW).status_code
            except requests.ConnectionError as exc:
                outcome["error"] = type(exc).__name__

        client = threading.Thread(target=in_flight)
        client.start()
        deadline = time.monotonic() + 10
        while SLOW not in [p for p, _ in ls.hits] and time.monotonic() < deadline:  # the worker is fetching
            time.sleep(0.05)
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        client.join(30)
        assert outcome.get("error") == "ConnectionError", outcome  # that client sees the failure
        recovered = click(g.url)  # the master forks a new worker; it loads the model and answers
        recovery_s = time.monotonic() - killed_at
        assert recovered.status_code == 200
        assert recovered.json()["results"][0]["result"][0]["type"] == "brushlabels"
        replacement, = children(g.proc.pid)
        assert replacement != victim and g.proc.poll() is None
        record("gunicorn worker SIGKILLed mid-request", {"client": outcome["error"], "next request": 200,
                                                         "recovery_s": round(recovery_s, 1),
                                                         "new worker pid": replacement != victim})


def test_redis_restart_loses_no_queued_job_and_serving_goes_on(tmp_path):
    """Redis stops (SIGTERM) and comes back on the same port and data dir: clicks answer all the
    while (replayed without the session cache), a webhook during the outage answers 503 and its
    annotation is counted once Redis is back, the queued job is still queued, and its pending slot
    still coalesces new events."""
    port, data = free_port(), tmp_path / "redis"
    data.mkdir()
    with hostile_host({OK: Body(IMAGE)}) as ls, contextlib.ExitStack() as first_redis:
        url = first_redis.enter_context(redis_server(port, appendonly=True, data_dir=data))
        with gunicorn_server(env=env_for(tmp_path, ls.url, REDIS_URL=url), workers=1, threads=2) as g:
            queued = requests.post(g.url + "/webhook", json={"action": "START_TRAINING", "project": 3}, timeout=30)
            assert queued.status_code == 201 and queued.json()["status"] == "queued"
            job_id = queued.json()["job_id"]
            assert click(g.url, n=2).status_code == 200
            workers = children(g.proc.pid)
            statuses, stop = [], threading.Event()

            def annotator():
                n = 0
                while not stop.is_set():
                    n = n % 3 + 1
                    statuses.append(click(g.url, n=n, task_id=8).status_code)

            clicking = threading.Thread(target=annotator)
            clicking.start()
            time.sleep(1)
            first_redis.close()  # Redis goes away (SIGTERM: a graceful stop, the AOF is flushed)
            before_outage = len(statuses)
            down = requests.post(g.url + "/webhook", json={"action": "ANNOTATION_CREATED", "project": 3,
                                                           "annotation": {"id": 1}}, timeout=30)
            assert down.status_code == 503 and "Redis is unreachable" in down.json()["error"]
            assert requests.get(g.url + f"/jobs/{job_id}", timeout=30).status_code == 503
            time.sleep(4)
            during_outage = len(statuses) - before_outage
            with redis_server(port, appendonly=True, data_dir=data):
                time.sleep(1)
                stop.set()
                clicking.join(120)
                conn = fit_queue.connect(url)
                assert job_id in Queue(fit_queue.QUEUE, connection=conn).job_ids
                state = requests.get(g.url + f"/jobs/{job_id}", timeout=30).json()["state"]
                assert state == "queued"
                again = requests.post(g.url + "/webhook", json={"action": "ANNOTATION_CREATED", "project": 3,
                                                                "annotation": {"id": 2}}, timeout=30).json()
                assert again["status"] == "coalesced" and again["job_id"] == job_id
                assert again["new_annotations"] == 2  # the one sent during the outage was kept
                assert click(g.url, n=3).status_code == 200
            assert set(statuses) == {200} and during_outage >= 1, statuses
            assert children(g.proc.pid) == workers and "Traceback" not in g.log()
    record("Redis restarted while serving, job queued", {
        "clicks during the test": len(statuses), "of them 200": statuses.count(200),
        "clicks while Redis was down": during_outage, "queued job after restart": state,
        "webhook during outage": 503, "annotation events kept": "1/1", "worker restarts": 0})
