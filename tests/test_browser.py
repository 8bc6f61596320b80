"""An annotator's first run, in a real browser (slow; deselected in the default run):

    scripts/test --slow          (or: pytest -m browser)

A real Label Studio 1.23.2, this backend under gunicorn, Redis and the RQ worker run locally;
headless Debian Chromium, driven by Playwright, logs in, opens a task whose project uses the
labeling config from README.md, switches on Auto-Annotation, picks the smart keypoint tool,
clicks on the object and waits for the brush suggestion; Alt+clicks a negative point on what
the mask got wrong and checks that the mask shrinks; accepts and submits. The submitted
annotation must hold the mask the backend sent, and the backend must have received Label
Studio's webhook and run a training job for it. Screenshots go to artifacts/browser/.
"""
from __future__ import annotations

import json
import re

import cv2
import numpy as np
import pytest
import requests
from label_studio_sdk.converter.brush import decode_rle

from focuscut_core.data import data_root, list_samples, load_mask
from labelstudio import PASSWORD, USERNAME, label_studio_server
from services import ROOT, gunicorn_server, launched, wait_for

pytestmark = pytest.mark.browser

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = ROOT / "artifacts" / "browser"
INTERACTIVE = "/interactive-annotating"


def readme_label_config() -> str:
    """The labeling config README.md tells users to paste."""
    return re.search(r"```xml\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)


def region_mask(region: dict) -> np.ndarray:
    """HxW bool mask of a brushlabels result."""
    h, w = region["original_height"], region["original_width"]
    return decode_rle(region["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 0


def depth(where: np.ndarray) -> np.ndarray:
    """HxW float: each pixel's distance (px) to the nearest pixel outside ``where``."""
    return cv2.distanceTransform(np.pad(where, 1).astype(np.uint8), cv2.DIST_L2, 5)[1:-1, 1:-1]


def deepest(where: np.ndarray) -> tuple[int, int]:
    """(row, col) of the pixel of ``where`` farthest from its boundary."""
    r, c = np.unravel_index(int(np.argmax(depth(where))), where.shape)
    return int(r), int(c)


def negative_target(mask: np.ndarray, pos: tuple[int, int], background: np.ndarray, visible: np.ndarray):
    """Where an annotator would Alt+click: the core of a real blob (over 5 px deep) that ``mask``
    wrongly covers; else the part of the mask farthest from the positive click, 5 px inside it
    ("not this part")."""
    wrong = mask & background & visible
    if wrong.any() and depth(wrong).max() > 5:
        return deepest(wrong)
    inner = depth(mask & visible) > 5
    assert inner.any(), "the mask has no visible part to click away"
    rows, cols = np.mgrid[0:mask.shape[0], 0:mask.shape[1]]
    far = np.where(inner, (rows - pos[0]) ** 2 + (cols - pos[1]) ** 2, -1)
    r, c = np.unravel_index(int(np.argmax(far)), far.shape)
    return int(r), int(c)


class Canvas:
    """Maps image pixels to page coordinates on Label Studio's image (which may show it zoomed
    and clipped: only pixels inside the stage are clickable)."""

    def __init__(self, page, height: int, width: int):
        self.img = page.locator('img[alt="image"]').bounding_box()
        self.stage = page.locator(".konvajs-content").bounding_box()
        self.height, self.width = height, width

    def point(self, r: int, c: int) -> tuple[float, float]:
        return (self.img["x"] + (c + 0.5) / self.width * self.img["width"],
                self.img["y"] + (r + 0.5) / self.height * self.img["height"])

    def visible(self, margin: float = 4) -> np.ndarray:
        """HxW bool: pixels whose centre is on the stage (``margin`` page pixels inside it)."""
        rows, cols = np.mgrid[0:self.height, 0:self.width]
        x, y = self.point(rows, cols)
        s = self.stage
        return ((x > s["x"] + margin) & (x < s["x"] + s["width"] - margin)
                & (y > s["y"] + margin) & (y < s["y"] + s["height"] - margin))


def click_and_read_mask(page, x: float, y: float, alt: bool = False) -> tuple[list, np.ndarray]:
    """Click on the canvas (Alt held for a negative point); returns the keypoints the browser
    sent and the mask of the brush region the backend answered with."""
    with page.expect_response(lambda r: INTERACTIVE in r.url, timeout=180_000) as response:
        if alt:
            page.keyboard.down("Alt")
        page.mouse.click(x, y)
        if alt:
            page.keyboard.up("Alt")
    sent = json.loads(response.value.request.post_data)["context"]["result"]
    body = response.value.json()
    assert response.value.status == 200, body
    (region,) = body["data"]["result"]
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == ["Object"], region
    return sent, region_mask(region)


def pick_label(page, kind: str) -> None:
    """Select the "Object" label of the keypoint tag (the second row of labels)."""
    page.locator(".lsf-labels").nth(1 if kind == "keypoint" else 0).get_by_text("Object").click()


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def test_annotator_clicks_an_object_to_a_mask_and_submits_it(redis_url, tmp_path):
    from playwright.sync_api import sync_playwright

    sample = list_samples(data_root() / "grabcut")[0]
    truth = load_mask(sample.mask)
    obj, background = truth == 255, truth == 0
    height, width = truth.shape
    ARTIFACTS.mkdir(parents=True, exist_ok=True)

    with label_studio_server() as ls:
        env = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": ls.token, "REDIS_URL": redis_url,
               "FOCUSCUT_MODEL_DIR": str(tmp_path / "models"), "FOCUSCUT_CACHE_DIR": str(tmp_path / "cache"),
               "FOCUSCUT_TRAIN_MIN_ANNOTATIONS": "1", "FOCUSCUT_WEIGHTS": "", "OMP_NUM_THREADS": "1"}
        with gunicorn_server(env=env, workers=2, threads=2) as backend, launched("worker", env=env) as worker:
            api = requests.Session()
            api.headers.update(ls.headers)
            project = api.post(f"{ls.url}/api/projects", json={"title": "FocusCut", "label_config": readme_label_config()})
            assert project.status_code == 201, project.text
            pid = project.json()["id"]
            upload = api.post(f"{ls.url}/api/projects/{pid}/import",
                              files={"file": (sample.image.name, sample.image.read_bytes(), "image/jpeg")})
            assert upload.status_code == 201, upload.text
            ml = api.post(f"{ls.url}/api/ml", json={"url": backend.url, "project": pid, "title": "FocusCut",
                                                     "is_interactive": True})
            assert ml.status_code == 201 and ml.json()["state"] == "CO", ml.text
            (task,) = api.get(f"{ls.url}/api/tasks", params={"project": pid}).json()["tasks"]

            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                context = browser.new_context(viewport={"width": 1400, "height": 900})
                # nothing leaves the machine (Label Studio's page would call analytics hosts)
                context.route("**/*", lambda route: route.continue_()
                              if route.request.url.startswith((ls.url, "blob:", "data:")) else route.abort())
                page = context.new_page()
                try:
                    page.goto(f"{ls.url}/user/login/")
                    page.fill('input[name="email"]', USERNAME)
                    page.fill('input[name="password"]', PASSWORD)
                    page.click('button[type="submit"]')
                    page.wait_for_url(lambda url: "/user/login" not in url)

                    page.goto(f"{ls.url}/projects/{pid}/data?task={task['id']}")
                    page.wait_for_selector('img[alt="image"]', state="attached", timeout=60_000)
                    page.wait_for_selector(".konvajs-content", timeout=60_000)
                    shot(page, "01-task")

                    page.get_by_text("Auto-Annotation").click()
                    page.hover("button.lsf-tool_smart:not([aria-label])")  # the Auto-Detect tool group
                    page.click('.lsf-toolbar__smart button[aria-label="key-point-tool"]')
                    pick_label(page, "keypoint")
                    canvas = Canvas(page, height, width)
                    visible = canvas.visible()
                    shot(page, "02-smart-keypoint-tool")

                    # a positive click deep inside the object
                    pos = deepest(obj & visible)
                    sent, first = click_and_read_mask(page, *canvas.point(*pos))
                    (point,) = sent
                    assert point["is_positive"] is True and point["to_name"] == "image"
                    assert abs(point["value"]["x"] - (pos[1] + 0.5) / width * 100) < 100 / width
                    assert abs(point["value"]["y"] - (pos[0] + 0.5) / height * 100) < 100 / height
                    page.wait_for_selector(".lsf-auto-accept__info", timeout=30_000)  # "1 suggestions"
                    shot(page, "03-positive-click")
                    assert first[pos], "the clicked pixel is not in the mask"

                    neg = negative_target(first, pos, background, visible)
                    pick_label(page, "keypoint")
                    sent, second = click_and_read_mask(page, *canvas.point(*neg), alt=True)
                    assert [p["is_positive"] for p in sent] == [True, False], sent
                    shot(page, "04-negative-click")
                    assert second.sum() < first.sum(), (int(second.sum()), int(first.sum()))

                    page.click('[data-testid="bottombar-accept-suggestions-button"]')
                    page.wait_for_selector(".lsf-tree__node_type_brushregion", timeout=30_000)
                    shot(page, "05-accepted")

                    with page.expect_response(lambda r: r.request.method == "POST" and
                                              re.search(r"/api/tasks/\d+/annotations", r.url), timeout=60_000) as saved:
                        page.click('[aria-label="Submit current annotation"]')
                    assert saved.value.status == 201, saved.value.text()
                    annotation = saved.value.json()
                finally:
                    browser.close()

            (brush,) = [r for r in annotation["result"] if r["type"] == "brushlabels"]
            np.testing.assert_array_equal(region_mask(brush), second)

            # Label Studio's ANNOTATION_CREATED webhook reached the backend, which queued a job; the worker ran it
            def job():
                jobs = requests.get(f"{backend.url}/projects/{pid}/jobs", timeout=5).json()["jobs"]
                return jobs[0] if jobs else None
            wait_for(job, 60, "the training job")
            assert job()["meta"]["trigger"] == "ANNOTATION_CREATED"
            wait_for(lambda: job()["state"] in ("finished", "failed"), 300, "the training job to end")
            done = job()
            assert done["state"] == "finished", (done, worker.log()[-3000:])
            assert done["result"]["annotations"] == 1, done
            assert "Traceback" not in backend.log(), backend.log()[-3000:]
