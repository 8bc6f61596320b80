"""Basic auth as docs/SECURITY.md tells to set it up, against a real Label Studio 1.23.2 (slow;
deselected by default: ``pytest -m labelstudio``).

Label Studio refuses to connect the backend without the credentials, connects and predicts with
them, and its auto-created annotation webhook is refused (401) until the Authorization header is
added to that webhook, after which annotation events are counted in Redis.
"""
import base64
import time

import pytest
import requests
from label_studio_sdk.client import LabelStudio
from label_studio_sdk.core.api_error import ApiError

from backend import fit_queue
from fit_services import wait_until
from image_server import png_bytes, sample_image
from labelstudio import label_studio_server
from ls_export_server import brush_result
from ls_payloads import CONFIG, clicks_at
from procs import record
from services import gunicorn_server

pytestmark = pytest.mark.labelstudio
USER, PASSWORD = "ls-backend", "basic-SECRET-pass-77"


def test_label_studio_with_basic_auth_end_to_end(tmp_path, redis_url):
    image = sample_image(90, 120, seed=5)
    with label_studio_server(local_files_root=tmp_path) as ls:
        env = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token, "REDIS_URL": redis_url,
               "BASIC_AUTH_USER": USER, "BASIC_AUTH_PASS": PASSWORD, "FOCUSCUT_TRAIN_MIN_ANNOTATIONS": "100",
               "FOCUSCUT_CACHE_DIR": str(tmp_path / "cache"), "FOCUSCUT_MODEL_DIR": str(tmp_path / "models"),
               "OMP_NUM_THREADS": "1", "FOCUSCUT_WEIGHTS": ""}
        with gunicorn_server(env=env, workers=1, threads=2) as backend:
            client = LabelStudio(base_url=ls.url, api_key=ls.token)
            project = client.projects.create(title="basic auth", label_config=CONFIG)
            upload = requests.post(f"{ls.url}/api/projects/{project.id}/import", headers=ls.headers,
                                   files={"file": ("cat.png", png_bytes(image), "image/png")}, timeout=60)
            assert upload.status_code == 201, upload.text
            with pytest.raises(ApiError):  # no credentials: Label Studio's health check gets 401
                client.ml.create(project=project.id, url=backend.url, title="no auth", is_interactive=True)
            ml = client.ml.create(project=project.id, url=backend.url, title="FocusCut", is_interactive=True,
                                  auth_method="BASIC_AUTH", basic_auth_user=USER, basic_auth_pass=PASSWORD)
            task, = client.tasks.list(project=project.id)
            resp = requests.post(f"{ls.url}/api/ml/{ml.id}/interactive-annotating", headers=ls.headers, timeout=200,
                                 json={"task": task.id, "context": {"result": clicks_at([(45, 60, True)], 90, 120)}})
            assert resp.status_code == 200 and resp.json()["data"]["result"][0]["type"] == "brushlabels", resp.text

            conn = fit_queue.connect(redis_url)
            counted = lambda: int(conn.get(fit_queue.key("new", str(project.id))) or 0)  # noqa: E731
            mask = (sample_image(90, 120, seed=5)[:, :, 0] > 100).astype("uint8") * 255
            annotate = lambda: requests.post(  # noqa: E731
                f"{ls.url}/api/tasks/{task.id}/annotations/", headers=ls.headers, timeout=60,
                json={"result": [brush_result(mask, "Cat")]})
            assert annotate().status_code == 201
            hook, = [h for h in requests.get(f"{ls.url}/api/webhooks/", params={"project": project.id},
                                             headers=ls.headers, timeout=30).json() if h["url"].endswith("/webhook")]
            time.sleep(3)
            assert counted() == 0  # the webhook came without credentials: refused
            basic = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
            patched = requests.patch(f"{ls.url}/api/webhooks/{hook['id']}/", headers=ls.headers, timeout=30,
                                     json={"headers": {"Authorization": f"Basic {basic}"}})
            assert patched.status_code == 200, patched.text
            assert annotate().status_code == 201
            wait_until(lambda: counted() == 1, 30, "the annotation event counted")
            assert PASSWORD not in backend.log()
    record("basic auth with a real Label Studio 1.23.2", {
        "connect without credentials": "refused", "connect + predict with them": 200,
        "annotation webhook without header": "401 (not counted)", "after adding the header": "counted"})
