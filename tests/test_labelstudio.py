"""Against a real Label Studio 1.23.2 (slow; deselected in the default run):

    pytest -m labelstudio            (or scripts/test --slow)

A project with the click-to-mask config is made through label-studio-sdk, this backend (real
gunicorn, two workers) is connected as an interactive ML backend, an image is uploaded, and
Label Studio's own interactive-annotating endpoint is called as the labeling UI calls it.
The brush regions Label Studio hands back must be the core's masks for the same clicks.
"""
import numpy as np
import pytest
import requests
import torch
from label_studio_sdk.client import LabelStudio

from focuscut_core import Click, load_predictor, replay
from image_server import png_bytes, sample_image
from labelstudio import label_studio_server
from ls_payloads import CONFIG, clicks_at
from services import gunicorn_server
from test_backend_http import SEQUENCE, region_mask

pytestmark = pytest.mark.labelstudio


def test_label_studio_gets_our_brush_regions_for_smart_clicks(tmp_path):
    torch.set_num_threads(1)
    predictor = load_predictor()
    image = sample_image(90, 120, seed=11)
    (tmp_path / "files" / "pics").mkdir(parents=True)
    odd = sample_image(91, 121, seed=12)
    (tmp_path / "files" / "pics" / "odd.png").write_bytes(png_bytes(odd))
    with label_studio_server(local_files_root=tmp_path / "files") as ls:
        env = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token, "REDIS_URL": "",
               "FOCUSCUT_CACHE_DIR": str(tmp_path / "cache"), "FOCUSCUT_MODEL_DIR": str(tmp_path / "models"),
               "OMP_NUM_THREADS": "1", "FOCUSCUT_WEIGHTS": ""}
        with gunicorn_server(env=env, workers=2, threads=1) as backend:
            client = LabelStudio(base_url=ls.url, api_key=ls.token)
            project = client.projects.create(title="FocusCut click-to-mask", label_config=CONFIG)
            upload = requests.post(f"{ls.url}/api/projects/{project.id}/import", headers=ls.headers,
                                   files={"file": ("cat.png", png_bytes(image), "image/png")}, timeout=60)
            assert upload.status_code == 201, upload.text
            ml = client.ml.create(project=project.id, url=backend.url, title="FocusCut", is_interactive=True)
            assert client.ml.get(id=ml.id).model_version == predictor.version  # from our /setup
            task, = client.tasks.list(project=project.id)
            assert task.data["image"].startswith("/data/upload/")

            for n in range(1, len(SEQUENCE) + 1):
                resp = requests.post(f"{ls.url}/api/ml/{ml.id}/interactive-annotating", headers=ls.headers,
                                     json={"task": task.id, "context": {"result": clicks_at(SEQUENCE[:n], 90, 120)}},
                                     timeout=200)
                assert resp.status_code == 200, resp.text
                body = resp.json()
                assert "errors" not in body, body
                region, = body["data"]["result"]
                assert (region["from_name"], region["to_name"], region["type"]) == ("tag", "image", "brushlabels")
                assert region["value"]["brushlabels"] == ["Cat"]
                assert body["data"]["model_version"] == predictor.version
                expected = replay(predictor, image, [Click(r + 0.5, c + 0.5, p) for r, c, p in SEQUENCE[:n]]).mask
                np.testing.assert_array_equal(region_mask(region), expected)

            # a task served from Label Studio's local files (/data/local-files/?d=..., token needed)
            storage = requests.post(f"{ls.url}/api/storages/localfiles", headers=ls.headers, timeout=60, json={
                "project": project.id, "path": str(tmp_path / "files" / "pics"), "use_blob_urls": False,
                "title": "pics"})
            assert storage.status_code == 201, storage.text
            client.projects.import_tasks(id=project.id, request=[{"image": "/data/local-files/?d=pics/odd.png"}])
            local = [t for t in client.tasks.list(project=project.id) if t.id != task.id][0]
            corners = [(45, 60, True), (0, 0, False), (90, 120, False)]
            resp = requests.post(f"{ls.url}/api/ml/{ml.id}/interactive-annotating", headers=ls.headers, timeout=200,
                                 json={"task": local.id, "context": {"result": clicks_at(corners, 91, 121)}})
            assert resp.status_code == 200 and "errors" not in resp.json(), resp.text
            region, = resp.json()["data"]["result"]
            assert (region["original_height"], region["original_width"]) == (91, 121)
            expected = replay(predictor, odd, [Click(r + 0.5, c + 0.5, p) for r, c, p in corners]).mask
            np.testing.assert_array_equal(region_mask(region), expected)
            assert "Traceback" not in backend.log()
