"""The learning loop against a real Label Studio 1.23.2 (slow; ``pytest -m labelstudio``).

Annotations submitted through Label Studio's API make Label Studio post ANNOTATION_CREATED
webhooks to our /webhook; the queued job runs in a real ``rq worker``, reads the project's export
and uploaded images from Label Studio itself, and publishes; Label Studio's interactive
annotating then reports the new model version. The export is also compared, key by key, with
the recording the default tests serve (``ls_export_server.make_task``) and written to
``tests/data/ls_1_23_2_export.json`` when FOCUSCUT_RECORD_EXPORT=1.
"""
import json
import os
from pathlib import Path

import pytest
import requests
import torch
from label_studio_sdk.client import LabelStudio

from backend import annotations
from fit_services import rq_worker, wait_until, worker_env
from focuscut_core import load_weights, save_weights
from focuscut_core.weights import DEFAULT_WEIGHTS
from labelstudio import label_studio_server
from ls_export_server import brush_result, make_task, png_bytes, synthetic_object
from ls_payloads import CONFIG, clicks_at
from services import gunicorn_server

pytestmark = pytest.mark.labelstudio
RECORDING = Path(__file__).parent / "data" / "ls_1_23_2_export.json"


def blank_weights(path):
    net, _ = load_weights(DEFAULT_WEIGHTS)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
    return save_weights(path, net, meta={"version": "blank-default"})


def test_real_label_studio_webhooks_train_and_serve_the_new_version(redis_url, tmp_path):
    with label_studio_server() as ls:
        env = {**worker_env(redis_url, ls.url, tmp_path / "models"), "LABEL_STUDIO_API_KEY": ls.token,
               "FOCUSCUT_WEIGHTS": str(blank_weights(tmp_path / "blank.pt")), "FOCUSCUT_TRAIN_MIN_ANNOTATIONS": "3"}
        with gunicorn_server(env=env, workers=2) as web:
            client = LabelStudio(base_url=ls.url, api_key=ls.token)
            project = client.projects.create(title="fit", label_config=CONFIG)
            for i in range(1, 5):
                resp = requests.post(f"{ls.url}/api/projects/{project.id}/import", headers=ls.headers, timeout=60,
                                     files={"file": (f"obj{i}.png", png_bytes(synthetic_object(i)[0]), "image/png")})
                assert resp.status_code == 201, resp.text
            ml = client.ml.create(project=project.id, url=web.url, title="FocusCut", is_interactive=True)
            tasks = sorted(client.tasks.list(project=project.id), key=lambda t: t.id)
            for i, task in enumerate(tasks, 1):
                result = brush_result(synthetic_object(i)[1], label="Cat")
                client.annotations.create(id=task.id, result=[result])

            pid = str(project.id)
            listing = wait_until(lambda: (r := requests.get(f"{web.url}/projects/{pid}/jobs", timeout=5).json())
                                 ["jobs"] and r, 60, "Label Studio's webhooks queue a job")
            assert listing["new_annotations"] == 4 and len(listing["jobs"]) == 1, listing
            job_id = listing["jobs"][0]["id"]

            exported = annotations.fetch_export(ls.url, ls.token, pid)
            ours = make_task(1, project.id, "x.png", [brush_result(synthetic_object(1)[1])])
            assert set(exported[0]) == set(ours)
            assert set(exported[0]["annotations"][0]) <= set(ours["annotations"][0])
            assert set(exported[0]["annotations"][0]["result"][0]) == set(ours["annotations"][0]["result"][0])
            if os.environ.get("FOCUSCUT_RECORD_EXPORT") == "1":
                RECORDING.parent.mkdir(exist_ok=True)
                RECORDING.write_text(json.dumps(exported[:1], indent=1) + "\n")

            with rq_worker(env, "--burst") as worker:
                assert worker.proc.wait(300) == 0, worker.log()
            status = requests.get(f"{web.url}/jobs/{job_id}", timeout=5).json()
            assert status["state"] == "finished", status
            assert status["result"]["version"] == f"{pid}-v1" and status["result"]["skipped"] == {}
            assert status["result"]["samples_train"] + status["result"]["samples_holdout"] == 4

            resp = requests.post(f"{ls.url}/api/ml/{ml.id}/interactive-annotating", headers=ls.headers, timeout=200,
                                 json={"task": tasks[0].id, "context": {"result": clicks_at([(48, 64, True)], 96, 128)}})
            assert resp.status_code == 200 and resp.json()["data"]["model_version"] == f"{pid}-v1", resp.text
            assert "Traceback" not in web.log()
