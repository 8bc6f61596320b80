"""Fit jobs in a real ``rq worker`` process against a real Redis and a loopback Label Studio:
training and publication, progress in job.meta, a SIGKILLed worker, an unwritable model dir."""
import json
import math
import os
import signal

import pytest
import torch
from rq.job import Job, JobStatus

from backend import fit_queue, publish
from backend import settings as settings_module
from fit_services import labelstudio_project, rq_worker, wait_until, worker_env
from focuscut_core import load_weights
from focuscut_core.weights import DEFAULT_WEIGHTS
from ls_export_server import brush_result, make_task, synthetic_object
from services import redis_server


def blank_net():
    """A network whose every weight is zero: no click ever reaches IoU 0.9 with it, so any
    fine-tuned candidate is "not worse" and publication is deterministic."""
    net, _ = load_weights(DEFAULT_WEIGHTS)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    return net


@pytest.fixture
def redis_url():
    """A fresh Redis per test: a worker stopped mid-job leaves state a later test must not see."""
    with redis_server() as url:
        yield url


@pytest.fixture
def model_dir(tmp_path):
    """A model dir whose project 7 already serves a published version 7-v1 (blank weights)."""
    publish.publish(tmp_path, "7", blank_net(), parent="blank")
    return tmp_path


def enqueue(redis_url, model_dir, trigger="START_TRAINING", count=0):
    conn = fit_queue.connect(redis_url)
    settings = settings_module.load()
    settings = type(settings)(**{**settings.__dict__, "redis_url": redis_url, "model_dir": model_dir})
    return conn, fit_queue.request_training(conn, "7", trigger, settings, count=count)


def manifest(model_dir):
    return json.loads((model_dir / "7" / "manifest.json").read_text())


def test_job_fine_tunes_publishes_and_reports_progress(redis_url, model_dir):
    with labelstudio_project(7, 4) as (state, ls_url):
        image, mask = synthetic_object(50)
        broken = brush_result(mask)
        broken["value"]["rle"] = broken["value"]["rle"][:25]
        state.tasks[7] += [make_task(60, 7, "gone.png", [brush_result(mask)]),  # image answers 404
                           make_task(61, 7, "00000001-image1.png", [broken])]
        fit_queue.connect(redis_url).set(fit_queue.key("new", "7"), 5)
        conn, outcome = enqueue(redis_url, model_dir, "ANNOTATION_CREATED", count=1)  # the 6th: >= 5
        assert outcome["status"] == "queued", outcome
        with rq_worker(worker_env(redis_url, ls_url, model_dir), "--burst") as worker:
            assert worker.proc.wait(300) == 0, worker.log()
    job = Job.fetch(outcome["job_id"], connection=conn)
    assert job.get_status() == JobStatus.FINISHED, worker.log()
    result, meta = job.return_value(), job.meta
    assert result["published"] and result["version"] == "7-v2" and result["parent"] == "7-v1"
    assert result["skipped"] == {"image_unavailable": 1, "corrupt_rle": 1}
    assert result["samples_train"] + result["samples_holdout"] == 4 and result["samples_holdout"] >= 1
    assert meta["stage"] == "done" and meta["step"] == 1 and math.isfinite(meta["loss"])
    assert meta["noc90_before"] == 2.0 and meta["noc90_after"] <= meta["noc90_before"]
    m = manifest(model_dir)
    assert m["current"] == "7-v2" and m["versions"][1]["metrics"]["noc90_before"] == 2.0
    assert load_weights(model_dir / "7/versions/7-v2.pt")[1]["version"] == "7-v2"
    assert int(conn.get(fit_queue.key("new", "7"))) == 0  # the 6 it saw were consumed
    assert fit_queue.pending_job(conn, "7") is None
    assert any(r.startswith("/api/projects/7/export") for r in state.requests)


def test_killed_work_horse_is_retried_then_failed_and_nothing_is_published(redis_url, model_dir):
    before = (model_dir / "7/manifest.json").read_bytes()
    env_extra = {"FOCUSCUT_TRAIN_MAX_STEPS": "10000", "FOCUSCUT_TRAIN_MAX_SECONDS": "600"}
    with labelstudio_project(7, 4) as (_, ls_url), \
            rq_worker(worker_env(redis_url, ls_url, model_dir, **env_extra)) as worker:
        conn, outcome = enqueue(redis_url, model_dir)
        job = Job.fetch(outcome["job_id"], connection=conn)
        pids = []
        for attempt in range(2):  # the first kill is retried (Retry(max=1)), the second fails the job
            def training_in_a_new_horse():
                meta = job.get_meta()
                return meta.get("stage") == "training" and meta.get("step", 0) >= 1 \
                    and meta.get("worker_pid") not in pids and meta["worker_pid"]
            pid = wait_until(training_in_a_new_horse, 240, f"attempt {attempt + 1} training")
            pids.append(pid)
            os.kill(pid, signal.SIGKILL)
        wait_until(lambda: job.get_status() == JobStatus.FAILED, 60, "job failed")
        status = fit_queue.job_status(job)
        assert "Work-horse terminated unexpectedly" in status["error"] and "signal 9" in status["error"]
        assert status["retries_left"] == 0
        assert (model_dir / "7/manifest.json").read_bytes() == before
        assert sorted(p.name for p in (model_dir / "7/versions").iterdir()) == ["7-v1.pt"]
        # the failed job no longer blocks the project; its annotations are still counted
        assert enqueue(redis_url, model_dir)[1]["status"] == "queued"
        assert worker.proc.poll() is None, worker.log()


def test_unwritable_model_dir_fails_the_job_clearly_and_keeps_the_version(redis_url, model_dir):
    versions = model_dir / "7" / "versions"
    kept = model_dir / "kept-versions"
    versions.rename(kept)
    versions.write_text("a file where the versions folder should be")
    before = (model_dir / "7/manifest.json").read_bytes()
    with labelstudio_project(7, 4) as (_, ls_url):
        conn, outcome = enqueue(redis_url, model_dir)
        with rq_worker(worker_env(redis_url, ls_url, model_dir), "--burst") as worker:
            assert worker.proc.wait(300) == 0, worker.log()
    status = fit_queue.job_status(Job.fetch(outcome["job_id"], connection=conn))
    assert status["state"] == "failed" and "is not writable" in status["error"], status
    assert "current version is kept" in status["error"]
    assert (model_dir / "7/manifest.json").read_bytes() == before


def test_whole_worker_killed_job_is_recovered_by_the_next_worker(redis_url, model_dir):
    """SIGKILL of the worker and its work horse together (an OOM kill, a lost container): the job
    stays 'started' until its heartbeat expires (job monitoring interval + 60 s); the next worker's
    registry maintenance then retries it, and the retry publishes. Meanwhile nothing changed on disk."""
    before = (model_dir / "7/manifest.json").read_bytes()
    env_extra = {"FOCUSCUT_TRAIN_MAX_STEPS": "2"}
    with labelstudio_project(7, 4) as (_, ls_url):
        env = worker_env(redis_url, ls_url, model_dir, **env_extra)
        conn, outcome = enqueue(redis_url, model_dir)
        job = Job.fetch(outcome["job_id"], connection=conn)
        with rq_worker(env, "--job-monitoring-interval", "5") as first:
            wait_until(lambda: job.get_meta().get("step", 0) >= 1, 240, "first attempt training")
            os.killpg(first.proc.pid, signal.SIGKILL)  # the worker...
            os.kill(job.get_meta()["worker_pid"], signal.SIGKILL)  # ...and its horse (rq gives it its own session)
            first.proc.wait(10)
        assert job.get_status() == JobStatus.STARTED  # nobody knows yet that it died
        assert (model_dir / "7/manifest.json").read_bytes() == before
        # until then a new event coalesces into it (it is not lost: it will be retried)
        assert enqueue(redis_url, model_dir)[1]["job_id"] == job.id
        with rq_worker(env, "--worker-ttl", "20", "--maintenance-interval", "5"):
            wait_until(lambda: job.get_status() == JobStatus.FINISHED, 420, "retried job finished")
    status = fit_queue.job_status(job)
    assert status["retries_left"] == 0, status  # it ran again as rq's retry of an abandoned job
    assert status["result"]["version"] == "7-v2"
    assert manifest(model_dir)["current"] == "7-v2"
