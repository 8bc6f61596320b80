"""Faults of the fit side, for real: Label Studio unreachable while a training job runs in a real
``rq worker``. The job must fail with a reason that says so (after its one automatic retry),
publish nothing, leak no token, and succeed when retried once Label Studio is back.

(A SIGKILLed work horse and an unwritable model directory: tests/test_fit_worker.py.)
"""
from __future__ import annotations

import json
import time

from rq.job import Job, JobStatus

from backend import fit_queue, publish
from backend import settings as settings_module
from fit_services import TOKEN, labelstudio_project, rq_worker, worker_env
from procs import record
from services import free_port
from test_fit_worker import blank_net


def test_label_studio_unreachable_fails_the_job_with_a_reason_and_a_retry_succeeds(redis_url, tmp_path):
    publish.publish(tmp_path, "7", blank_net(), parent="blank")  # 7-v1 serves; see test_fit_worker
    manifest = tmp_path / "7" / "manifest.json"
    before = manifest.read_bytes()
    conn = fit_queue.connect(redis_url)
    settings = settings_module.load()
    settings = type(settings)(**{**settings.__dict__, "redis_url": redis_url, "model_dir": tmp_path})
    outcome = fit_queue.request_training(conn, "7", "START_TRAINING", settings)
    job = Job.fetch(outcome["job_id"], connection=conn)

    dead_ls = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    start = time.monotonic()
    with rq_worker(worker_env(redis_url, dead_ls, tmp_path), "--burst") as worker:
        assert worker.proc.wait(300) == 0, worker.log()
    failed_after = time.monotonic() - start
    status = fit_queue.job_status(job)
    assert status["state"] == "failed" and status["retries_left"] == 0, status
    assert "cannot read project 7's annotations from Label Studio" in status["error"]
    assert "ConnectError" in status["error"] and "can be retried" in status["error"]
    assert TOKEN not in json.dumps(status) and TOKEN not in worker.log()
    assert manifest.read_bytes() == before and fit_queue.pending_job(conn, "7") is None

    with labelstudio_project(7, 4) as (_, ls_url):  # Label Studio is back (at its address)
        job.requeue()
        with rq_worker(worker_env(redis_url, ls_url, tmp_path), "--burst") as worker:
            assert worker.proc.wait(300) == 0, worker.log()
    assert job.get_status() == JobStatus.FINISHED, worker.log()
    result = job.return_value()
    assert result["published"] and result["version"] == "7-v2"
    assert json.loads(manifest.read_text())["current"] == "7-v2"
    record("Label Studio unreachable during a fit job", {
        "attempts": 2, "state": "failed", "error": status["error"][:120] + "...",
        "failed after_s": round(failed_after, 1), "published while down": 0,
        "retry after Label Studio is back": f"finished, published {result['version']}"})
