"""The whole learning loop with real processes: Label Studio webhooks reach gunicorn, an RQ
worker fine-tunes from a loopback Label Studio export and publishes, and the same gunicorn
workers (no restart) answer /setup and /predict with the new version; rollback goes back."""
import time

import requests
import torch

from backend import fit_queue
from fit_services import labelstudio_project, rq_worker, worker_env
from focuscut_core import load_weights, save_weights
from focuscut_core.weights import DEFAULT_WEIGHTS
from ls_payloads import clicks_at, predict_body, setup_body, task
from services import free_port, gunicorn_server, redis_server

PROJECT = "7.1764000000"  # as Label Studio sends it to /setup and /predict


def blank_weights(path):
    """Zeroed weights as the default: they never reach IoU 0.9, so the fine-tuned candidate is
    "not worse" and is published whatever the shipped weights are."""
    net, _ = load_weights(DEFAULT_WEIGHTS)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    return save_weights(path, net, meta={"version": "blank-default"})


def annotation_webhook(task_id: int) -> dict:
    return {"action": "ANNOTATION_CREATED", "project": {"id": 7, "title": "horses"},
            "task": {"id": task_id, "project": 7, "data": {}},
            "annotation": {"id": 100 + task_id, "task": task_id, "project": 7, "result": [],
                           "was_cancelled": False}}


def served_versions(url: str, state, n: int = 4) -> set:
    name = state.tasks[7][0]["data"]["image"]
    body = predict_body([task(1, name, project=7)], clicks_at([(48, 64, True)], 96, 128), project=PROJECT)
    versions = set()
    for _ in range(n):
        resp = requests.post(url + "/predict", json=body, timeout=120)
        assert resp.status_code == 200, resp.text
        versions.add(resp.json()["model_version"])
        versions.add(resp.json()["results"][0]["model_version"])
    return versions


def test_webhook_to_worker_to_hot_reloaded_predictions(redis_url, tmp_path):
    weights = blank_weights(tmp_path / "blank.pt")
    with labelstudio_project(7, 4) as (state, ls_url):
        env = {**worker_env(redis_url, ls_url, tmp_path / "models"), "FOCUSCUT_WEIGHTS": str(weights),
               "FOCUSCUT_TRAIN_MIN_ANNOTATIONS": "2"}
        with gunicorn_server(env=env, workers=2) as web:
            setup = requests.post(web.url + "/setup", json=setup_body(PROJECT), timeout=60).json()
            assert setup == {"model_version": "blank-default"}
            assert served_versions(web.url, state) == {"blank-default"}

            answers = []
            for task_id in (1, 2):
                t0 = time.monotonic()
                resp = requests.post(web.url + "/webhook", json=annotation_webhook(task_id), timeout=5)
                answers.append((resp.status_code, resp.json(), time.monotonic() - t0))
            assert [a[1]["status"] for a in answers] == ["waiting", "queued"]
            assert all(code == 201 and seconds < 1.0 for code, _, seconds in answers)  # LS waits ~1 s
            job_id = answers[1][1]["job_id"]
            assert requests.post(web.url + "/webhook", json={"action": "START_TRAINING", "project": {"id": 7}},
                                 timeout=5).json()["job_id"] == job_id  # coalesced, not duplicated
            assert requests.get(f"{web.url}/jobs/{job_id}", timeout=5).json()["state"] == "queued"

            with rq_worker(env, "--burst") as worker:
                assert worker.proc.wait(300) == 0, worker.log()

            status = requests.get(f"{web.url}/jobs/{job_id}", timeout=5).json()
            assert status["state"] == "finished", status
            assert status["result"]["version"] == "7-v1" and status["meta"]["step"] == 1
            assert status["meta"]["noc90_before"] == 2.0
            listing = requests.get(f"{web.url}/projects/7/jobs", timeout=5).json()
            assert [j["id"] for j in listing["jobs"]] == [job_id] and listing["pending_job"] is None
            assert listing["new_annotations"] == 0

            # hot reload: the same gunicorn workers, no restart
            assert served_versions(web.url, state) == {"7-v1"}
            assert requests.post(web.url + "/setup", json=setup_body(PROJECT), timeout=60).json() == \
                {"model_version": "7-v1"}
            versions = requests.get(f"{web.url}/projects/7/versions", timeout=5).json()
            assert versions["current"] == "7-v1" and versions["versions"][0]["parent"] == "blank-default"

            rolled = requests.post(f"{web.url}/projects/7/rollback", json={}, timeout=5)
            assert rolled.json() == {"project": "7", "current": None}
            assert served_versions(web.url, state) == {"blank-default"}
            bad = requests.post(f"{web.url}/projects/7/rollback", json={"version": "7-v9"}, timeout=5)
            assert bad.status_code == 409 and "no version '7-v9'" in bad.json()["error"]
            assert web.proc.poll() is None
    assert fit_queue.QUEUE in worker.log()


def test_redis_down_predict_serves_fit_answers_503_and_the_count_survives(tmp_path):
    port = free_port()
    first_redis = redis_server(port=port)
    redis_url = first_redis.__enter__()
    try:
        with labelstudio_project(7, 2) as (state, ls_url), gunicorn_server(
                env={**worker_env(redis_url, ls_url, tmp_path / "models"), "FOCUSCUT_TRAIN_MIN_ANNOTATIONS": "3"},
                workers=1) as web:
            first = requests.post(web.url + "/webhook", json=annotation_webhook(1), timeout=5).json()
            assert first["status"] == "waiting" and first["new_annotations"] == 1
            first_redis.__exit__(None, None, None)  # Redis dies and, keeping no data, forgets everything
            first_redis = None

            assert served_versions(web.url, state, n=2)  # predictions go on
            t0 = time.monotonic()
            down = requests.post(web.url + "/webhook", json=annotation_webhook(2), timeout=5)
            assert down.status_code == 503 and time.monotonic() - t0 < 1.0
            assert "Redis is unreachable" in down.json()["error"] and "will be added" in down.json()["error"]
            assert requests.get(web.url + "/projects/7/jobs", timeout=5).status_code == 503

            with redis_server(port=port):
                back = requests.post(web.url + "/webhook", json=annotation_webhook(3), timeout=5).json()
            # the event that met the outage is counted again: this one + the one kept in the process
            assert back["new_annotations"] == 2 and back["status"] == "waiting"
    finally:
        if first_redis is not None:
            first_redis.__exit__(None, None, None)
