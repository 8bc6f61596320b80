"""Queueing fits on a real Redis: counters, coalescing, START_TRAINING, Redis down, the webhook
route and the scheduler. No worker runs here, so queued jobs stay queued."""
import itertools
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from rq import Queue

from backend import fit_queue, settings as settings_module
from services import ROOT, free_port, redis_server

_projects = itertools.count(100)


@pytest.fixture
def conn(redis_url):
    return fit_queue.connect(redis_url)


@pytest.fixture
def settings(redis_url, tmp_path):
    return replace(settings_module.load(), redis_url=redis_url, model_dir=tmp_path, train_min_annotations=3)


@pytest.fixture
def project():
    return str(next(_projects))


def queued_ids(conn):
    return Queue(fit_queue.QUEUE, connection=conn).job_ids


def test_training_waits_for_enough_annotations_then_one_job(conn, settings, project):
    outcomes = [fit_queue.request_training(conn, project, "ANNOTATION_CREATED", settings, count=1) for _ in range(2)]
    assert [o["status"] for o in outcomes] == ["waiting", "waiting"] and outcomes[1]["new_annotations"] == 2
    third = fit_queue.request_training(conn, project, "ANNOTATION_UPDATED", settings, count=1)
    assert third["status"] == "queued" and third["job_id"].startswith(f"fit-{project}-")
    assert third["job_id"] in queued_ids(conn)
    job = fit_queue.pending_job(conn, project)
    assert job.id == third["job_id"] and job.meta["trigger"] == "ANNOTATION_UPDATED"
    assert job.retries_left == 1


def test_a_concurrent_burst_coalesces_into_one_pending_job(conn, settings, project):
    def event(_):
        return fit_queue.request_training(conn, project, "ANNOTATION_CREATED", settings, count=1)

    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(event, range(40)))
    job_ids = {o["job_id"] for o in outcomes if o["job_id"]}
    assert len(job_ids) == 1
    assert sum(o["status"] == "queued" for o in outcomes) == 1
    assert int(conn.get(fit_queue.key("new", project))) == 40
    assert [i for i in queued_ids(conn) if i.startswith(f"fit-{project}-")] == list(job_ids)
    again = fit_queue.request_training(conn, project, "START_TRAINING", settings)
    assert again["status"] == "coalesced" and again["job_id"] in job_ids


def test_start_training_starts_without_new_annotations(conn, settings, project):
    outcome = fit_queue.request_training(conn, project, "START_TRAINING", settings)
    assert outcome["status"] == "queued" and outcome["new_annotations"] == 0


def test_a_finished_or_failed_job_no_longer_blocks(conn, settings, project):
    first = fit_queue.request_training(conn, project, "START_TRAINING", settings)["job_id"]
    job = fit_queue.pending_job(conn, project)
    Queue(fit_queue.QUEUE, connection=conn).remove(job)
    job.cancel()
    second = fit_queue.request_training(conn, project, "START_TRAINING", settings)
    assert second["status"] == "queued" and second["job_id"] != first


def test_finish_subtracts_what_the_job_saw_and_queues_a_follow_up(conn, settings, project):
    for _ in range(3):
        job_id = fit_queue.request_training(conn, project, "ANNOTATION_CREATED", settings, count=1)["job_id"]
    # while the job "runs", 4 more annotations arrive: coalesced into it
    for _ in range(4):
        assert fit_queue.request_training(conn, project, "ANNOTATION_CREATED", settings, count=1)["job_id"] == job_id
    follow_up = fit_queue.finish(conn, project, job_id, seen=3, settings=settings)
    assert follow_up["status"] == "queued" and follow_up["new_annotations"] == 4
    assert follow_up["job_id"] != job_id
    assert conn.get(fit_queue.key("pending", project)).decode() == follow_up["job_id"]
    # a job that saw more than is left (counter reset meanwhile) leaves zero, not a negative count
    assert fit_queue.finish(conn, project, "someone-else", seen=10, settings=settings) is None
    assert int(conn.get(fit_queue.key("new", project))) == 0
    assert conn.get(fit_queue.key("pending", project)).decode() == follow_up["job_id"]


def test_redis_down_raises_and_the_count_is_added_when_it_returns(settings, project):
    port = free_port()
    down = fit_queue.connect(f"redis://127.0.0.1:{port}/0")
    for _ in range(2):
        with pytest.raises(fit_queue.RedisUnavailable, match="Redis is unreachable"):
            fit_queue.request_training(down, project, "ANNOTATION_CREATED", settings, count=1)
    with redis_server(port=port) as url:
        back = fit_queue.connect(url)
        outcome = fit_queue.request_training(back, project, "ANNOTATION_CREATED", settings, count=1)
        assert outcome["new_annotations"] == 3 and outcome["status"] == "queued"


def test_scheduler_queues_only_projects_with_enough_new_annotations(conn, settings, redis_url):
    ready, not_ready = str(next(_projects)), str(next(_projects))
    conn.sadd(fit_queue.key("projects"), ready, not_ready)
    conn.set(fit_queue.key("new", ready), 5)
    conn.set(fit_queue.key("new", not_ready), 1)
    env = {**os.environ, "REDIS_URL": redis_url, "FOCUSCUT_TRAIN_MIN_ANNOTATIONS": "3"}
    run = subprocess.run([sys.executable, "-m", "backend.scheduler", "--once"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert f"project {ready}: 5 new annotations, queued job" in run.stderr
    assert fit_queue.pending_job(conn, ready) is not None
    assert fit_queue.pending_job(conn, not_ready) is None
    again = subprocess.run([sys.executable, "-m", "backend.scheduler", "--once"], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=60)
    assert "queued job" not in again.stderr  # the pending job is not duplicated


def test_webhook_route_counts_coalesces_and_answers_503_without_redis(redis_url, tmp_path, project, monkeypatch):
    monkeypatch.setenv("REDIS_URL", redis_url)
    monkeypatch.setenv("FOCUSCUT_TRAIN_MIN_ANNOTATIONS", "2")
    monkeypatch.setenv("FOCUSCUT_MODEL_DIR", str(tmp_path))
    settings_module.get.cache_clear()
    from backend.api import create_app

    client = create_app().test_client()
    created = {"action": "ANNOTATION_CREATED", "project": {"id": int(project), "title": "p"},
               "annotation": {"id": 1, "result": [], "was_cancelled": False}, "task": {"id": 1}}
    first = client.post("/webhook", json=created)
    assert first.status_code == 201 and first.json["status"] == "waiting"
    second = client.post("/webhook", json=created)
    assert second.json["status"] == "queued"
    third = client.post("/webhook", json={"action": "START_TRAINING", "project": {"id": int(project)}})
    assert third.json == {**second.json, "status": "coalesced", "new_annotations": 2}
    assert client.post("/webhook", json={"action": "PROJECT_UPDATED", "project": {"id": 1}}).json["status"] == "ignored"
    assert client.post("/webhook", data="not json").status_code == 400
    assert client.post("/webhook", json={"action": "START_TRAINING", "project": "x"}).status_code == 400
    jobs = client.get(f"/projects/{project}/jobs").json
    assert jobs["pending_job"] == second.json["job_id"] and jobs["new_annotations"] == 2
    assert jobs["jobs"][0]["state"] == "queued" and jobs["jobs"][0]["meta"]["stage"] == "queued"
    assert client.get(f"/jobs/{second.json['job_id']}").json["id"] == second.json["job_id"]
    assert client.get("/jobs/nope").status_code == 404

    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    settings_module.get.cache_clear()
    down = create_app().test_client().post("/webhook", json=created)
    assert down.status_code == 503 and "Redis is unreachable" in down.json["error"]
    monkeypatch.delenv("REDIS_URL")
    settings_module.get.cache_clear()
    unset = create_app().test_client().post("/webhook", json=created)
    assert unset.status_code == 503 and "REDIS_URL is not set" in unset.json["error"]
    settings_module.get.cache_clear()
