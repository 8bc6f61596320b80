"""The backend served by a real gunicorn, driven over HTTP as Label Studio 1.23 drives it; every
returned mask is compared with the core's own Session on the same image and clicks."""
from __future__ import annotations

import contextlib
import itertools
import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import redis
import requests
import torch
from label_studio_sdk.converter.brush import decode_rle

from focuscut_core import Click, InferenceConfig, load_predictor, replay, save_weights
from focuscut_core.weights import DEFAULT_WEIGHTS, load_weights
from image_server import image_server, png_bytes, sample_image
from ls_payloads import CONFIG, clicks_at, keypoint, predict_body, setup_body, task
from services import gunicorn_server, redis_server
from test_images import png_header_only

TOKEN = "test-token-0123456789"
H, W = 90, 120
IMAGE = sample_image(H, W)
ODD = sample_image(91, 121, seed=3)
UPLOAD = "/data/upload/1/cat.png"
SEQUENCE = [(45, 60, True), (20, 30, False), (70, 100, True), (44, 20, False)]  # (row, col, positive)


@pytest.fixture(scope="module")
def predictor():
    torch.set_num_threads(1)
    return load_predictor()


def core_mask(predictor, image, pixels) -> np.ndarray:
    """The core's own mask for clicks on pixel centres [(row, col, positive)]."""
    clicks = [Click(r + 0.5, c + 0.5, p) for r, c, p in pixels]
    return replay(predictor, image, clicks, InferenceConfig(mode="fast_pfs")).mask


def region_mask(region: dict) -> np.ndarray:
    h, w = region["original_height"], region["original_width"]
    return decode_rle(region["value"]["rle"]).reshape(h, w, 4)[:, :, 3] > 127


def stats(resp) -> dict:
    return json.loads(resp.headers["X-FocusCut-Stats"])


def base_env(tmp_path, ls_url: str, **extra) -> dict:
    return {"LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": TOKEN, "REDIS_URL": "",
            "FOCUSCUT_CACHE_DIR": str(tmp_path / "images"), "FOCUSCUT_MODEL_DIR": str(tmp_path / "models"),
            "FOCUSCUT_MAX_PIXELS": "1000000", "FOCUSCUT_FETCH_TIMEOUT": "5", "OMP_NUM_THREADS": "1",
            "FOCUSCUT_WEIGHTS": "", "FOCUSCUT_ALLOWED_HOSTS": "127.0.0.0/8", **extra}  # the 'cloud' host


def post(url: str, body, **kw) -> requests.Response:
    return requests.post(url, json=body, timeout=120, **kw)


def click_request(url: str, pixels, image_url: str = UPLOAD, label: str = "Cat", size=(H, W), task_id: int = 7, **kw):
    results = clicks_at(pixels, size[0], size[1], label)
    return post(url + "/predict", predict_body([task(task_id, image_url)], results, **kw))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One gunicorn worker (in-process session LRU) + a Label-Studio-like file server."""
    tmp = tmp_path_factory.mktemp("backend")
    files = {UPLOAD: png_bytes(IMAGE), "/data/local-files/?d=odd%2Fodd.png": png_bytes(ODD),
             "/data/upload/1/notes.png": b"plain text, no pixels", "/data/upload/1/huge.png": png_header_only(2000, 2000)}
    with image_server(files) as ls, image_server({"/bucket/odd.png?X-Amz-Signature=f00": png_bytes(ODD)}) as cloud:
        with gunicorn_server(env=base_env(tmp, ls.url), workers=1, threads=2) as g:
            yield g, ls, cloud, tmp


def test_health_and_setup_report_the_version(server, predictor):
    g, *_ = server
    assert requests.get(g.url + "/health", timeout=10).json()["status"] == "UP"
    resp = post(g.url + "/setup", setup_body())
    assert resp.status_code == 200 and resp.json() == {"model_version": predictor.version}


def test_each_click_matches_the_core_and_costs_one_step(server, predictor):
    g, ls, _, _ = server
    for n in range(1, len(SEQUENCE) + 1):
        resp = click_request(g.url, SEQUENCE[:n])
        assert resp.status_code == 200, resp.text
        body = resp.json()
        prediction, = body["results"]
        region, = prediction["result"]
        assert (region["from_name"], region["to_name"], region["type"]) == ("tag", "image", "brushlabels")
        assert region["value"]["brushlabels"] == ["Cat"] and region["value"]["format"] == "rle"
        assert (region["original_width"], region["original_height"]) == (W, H)
        assert body["model_version"] == prediction["model_version"] == predictor.version
        np.testing.assert_array_equal(region_mask(region), core_mask(predictor, IMAGE, SEQUENCE[:n]))
        assert stats(resp)["steps"] == 1 and stats(resp)["cache_hit_clicks"] == n - 1
    undo = click_request(g.url, SEQUENCE[:2])  # undo back to two clicks: both states are stored
    assert stats(undo)["steps"] == 0
    np.testing.assert_array_equal(region_mask(undo.json()["results"][0]["result"][0]),
                                  core_mask(predictor, IMAGE, SEQUENCE[:2]))
    changed = click_request(g.url, SEQUENCE[:2] + [(10, 10, True)])  # a changed third click
    assert stats(changed)["steps"] == 1
    uploads = [h for p, h in ls.requests if p == UPLOAD]
    assert uploads and all(h.get("Authorization") == f"Token {TOKEN}" for h in uploads)


def test_brush_label_and_names_follow_the_config(server, predictor):
    g, *_ = server
    config = (CONFIG.replace('name="tag"', 'name="masks"').replace('name="tag2"', 'name="clicks"')
              .replace('name="image"', 'name="photo"').replace('toName="image"', 'toName="photo"'))
    pixels = [(40, 50, True)]
    results = [keypoint((50 + 0.5) / W * 100, (40 + 0.5) / H * 100, "Dog", None, (W, H), "clicks", "photo")]
    resp = post(g.url + "/predict", predict_body([task(8, UPLOAD)], results, config=config))
    assert resp.status_code == 200, resp.text
    region, = resp.json()["results"][0]["result"]
    assert (region["from_name"], region["to_name"], region["value"]["brushlabels"]) == ("masks", "photo", ["Dog"])
    np.testing.assert_array_equal(region_mask(region), core_mask(predictor, IMAGE, pixels))


@pytest.mark.parametrize("source", ["local-files", "presigned"])
def test_odd_sized_images_by_every_kind_of_url(server, predictor, source):
    """Clicks on the corners and the centre of a 91x121 image, fetched as an LS local file
    (with the token) or a presigned cloud URL (without)."""
    g, ls, cloud, _ = server
    url = "/data/local-files/?d=odd%2Fodd.png" if source == "local-files" else cloud.url + "/bucket/odd.png?X-Amz-Signature=f00"
    corners = [(0, 0, False), (90, 120, False)] if source == "local-files" else [(0, 120, False), (90, 0, True)]
    pixels = [(45, 60, True), *corners]
    resp = click_request(g.url, pixels, image_url=url, size=(91, 121))
    assert resp.status_code == 200, resp.text
    region, = resp.json()["results"][0]["result"]
    assert (region["original_height"], region["original_width"]) == (91, 121)
    np.testing.assert_array_equal(region_mask(region), core_mask(predictor, ODD, pixels))
    if source == "presigned":
        assert all(h.get("Authorization") is None for _, h in cloud.requests)
    else:
        assert ls.requests[-1][1].get("Authorization") == f"Token {TOKEN}"


def test_exactly_100_percent_is_the_last_pixel(server, predictor):
    g, *_ = server
    results = [keypoint(100.0, 100.0, "Cat", True, (W, H)), keypoint(0.0, 0.0, "Cat", False, (W, H))]
    resp = post(g.url + "/predict", predict_body([task(9, UPLOAD)], results))
    assert resp.status_code == 200, resp.text
    expected = replay(predictor, IMAGE, [Click(np.nextafter(H, 0), np.nextafter(W, 0)), Click(0, 0, False)]).mask
    np.testing.assert_array_equal(region_mask(resp.json()["results"][0]["result"][0]), expected)


@pytest.mark.parametrize("results", [None, []])
def test_no_clicks_answer_an_empty_list_at_once(server, results):
    g, *_ = server
    start = time.monotonic()
    resp = post(g.url + "/predict", predict_body([task(7, "/data/upload/1/never-fetched.png")], results))
    assert resp.status_code == 200 and resp.json()["results"] == []
    assert time.monotonic() - start < 2.0


BAD_CONFIG_NO_IMAGE = '<View><Text name="t" value="$text"/><Labels name="l" toName="t"><Label value="Cat"/></Labels></View>'
BAD_CONFIG_NO_BRUSH = ('<View><Image name="image" value="$image"/><KeyPointLabels name="tag2" toName="image" smart="true">'
                       '<Label value="Cat"/></KeyPointLabels></View>')
ONE = clicks_at([(45, 60, True)], H, W)


def _with(x=None, y=None):
    item = json.loads(json.dumps(ONE[0]))
    if x is not None:
        item["value"]["x"] = x
    if y is not None:
        item["value"]["y"] = y
    return [item]


BAD_REQUESTS = {
    "malformed json": ("raw", b'{"tasks": [', 400),
    "not an object": ("raw", b"[1, 2]", 400),
    "missing tasks": ("json", {**predict_body([task(7, UPLOAD)], ONE), "tasks": None}, 400),
    "empty tasks": ("json", predict_body([], ONE), 400),
    "no Image tag": ("json", predict_body([task(7, UPLOAD)], ONE, config=BAD_CONFIG_NO_IMAGE), 422),
    "no BrushLabels": ("json", predict_body([task(7, UPLOAD)], ONE, config=BAD_CONFIG_NO_BRUSH), 422),
    "broken xml": ("json", predict_body([task(7, UPLOAD)], ONE, config="<View><Image"), 400),
    "click right of the image": ("json", predict_body([task(7, UPLOAD)], _with(x=100.5)), 422),
    "click above the image": ("json", predict_body([task(7, UPLOAD)], _with(y=-3)), 422),
    "text coordinate": ("json", predict_body([task(7, UPLOAD)], _with(x="12.5")), 400),
    "nan coordinate": ("raw", json.dumps(predict_body([task(7, UPLOAD)], _with(y=float("nan")))).encode(), 422),
    "image 404": ("json", predict_body([task(7, "/data/upload/1/gone.png")], ONE), 422),
    "not an image": ("json", predict_body([task(7, "/data/upload/1/notes.png")], ONE), 422),
    "too many pixels": ("json", predict_body([task(7, "/data/upload/1/huge.png")], ONE), 422),
    "no image field": ("json", predict_body([{"id": 7, "data": {"text": "hi"}}], ONE), 422),
    "label without brush": ("json", predict_body([task(7, UPLOAD)], clicks_at([(4, 5, True)], H, W, "Horse")), 422),
    "context not an object": ("json", {**predict_body([task(7, UPLOAD)], None), "params": {"context": "x"}}, 400),
}


def test_bad_input_is_a_clear_4xx_and_loses_nothing(server, predictor):
    g, *_ = server
    first = click_request(g.url, SEQUENCE[:3])
    assert first.status_code == 200
    for name, (kind, body, status) in BAD_REQUESTS.items():
        if kind == "raw":
            resp = requests.post(g.url + "/predict", data=body, headers={"Content-Type": "application/json"}, timeout=60)
        else:
            resp = post(g.url + "/predict", body)
        assert resp.status_code == status, (name, resp.status_code, resp.text)
        error = resp.json()["error"]
        assert isinstance(error, str) and error and "Traceback" not in resp.text, name
    for route in ("/setup", "/webhook"):
        resp = requests.post(g.url + route, data=b"{oops", timeout=30)
        assert resp.status_code == 400 and resp.json()["error"], route
    bad_setup = post(g.url + "/setup", setup_body(config=BAD_CONFIG_NO_BRUSH))
    assert bad_setup.status_code == 422 and "BrushLabels" in bad_setup.json()["error"]
    again = click_request(g.url, SEQUENCE[:3])  # stored state and cached image survived
    assert again.status_code == 200 and stats(again)["steps"] == 0
    np.testing.assert_array_equal(region_mask(again.json()["results"][0]["result"][0]),
                                  core_mask(predictor, IMAGE, SEQUENCE[:3]))
    assert "Traceback" not in g.log()


def test_published_versions_are_served_without_restart(server, predictor):
    """registry: a version published for project 5 is used from the next request; a broken
    manifest leaves it on the version it served; other projects keep the default."""
    g, _, _, tmp = server
    project_dir = tmp / "models" / "5"
    net, meta = load_weights(DEFAULT_WEIGHTS)
    save_weights(project_dir / "versions" / "5-v1.pt", net, {**meta, "version": "5-v1"})
    manifest = {"project": "5", "current": "5-v1", "versions": [
        {"version": "5-v1", "file": "versions/5-v1.pt", "created": "2026-11-25T15:00:00Z", "parent": None, "metrics": {}}]}
    (project_dir / "manifest.json").write_text(json.dumps(manifest))
    assert post(g.url + "/setup", setup_body(project="5.1764000000")).json()["model_version"] == "5-v1"
    resp = click_request(g.url, SEQUENCE[:2], project="5.1764000000")
    assert resp.status_code == 200 and resp.json()["model_version"] == "5-v1"
    np.testing.assert_array_equal(region_mask(resp.json()["results"][0]["result"][0]),
                                  core_mask(predictor, IMAGE, SEQUENCE[:2]))
    listed = requests.get(g.url + "/versions", json={"project": "5.1764000000"}, timeout=30).json()
    assert listed == {"versions": [predictor.version, "5-v1"], "current": "5-v1"}
    (project_dir / "manifest.json").write_text("{ not json")
    resp = click_request(g.url, SEQUENCE[:1], project="5.1764000000")
    assert resp.status_code == 200 and resp.json()["model_version"] == "5-v1"
    other = click_request(g.url, SEQUENCE[:1], project="6.1764000000")
    assert other.json()["model_version"] == predictor.version


def test_importing_the_app_loads_no_network():
    """gunicorn may import the app before forking: nothing is loaded (and CUDA untouched) until
    a worker's first request."""
    code = ("import torch, backend.wsgi, backend.model as m; "
            "assert not m.segmenter.built; assert not torch.cuda.is_initialized(); print('lazy')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "lazy" in out.stdout, out.stderr


# --- several workers and Redis -------------------------------------------------------------

def _concurrently(fn, n: int = 2):
    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(lambda _: fn(), range(n)))


def test_two_workers_share_sessions_through_redis(tmp_path, predictor):
    with redis_server() as redis_url, image_server({UPLOAD: png_bytes(IMAGE)}) as ls, \
            gunicorn_server(env=base_env(tmp_path, ls.url, REDIS_URL=redis_url, FOCUSCUT_LIVE_SESSIONS="0"),
                            workers=2, threads=1) as g:
        pids, new_tasks = set(), itertools.count(100)
        for _ in range(10):  # no /setup anywhere: both sync workers answer /predict
            # new tasks: each request computes (a cached one is so quick that one worker may take both)
            for resp in _concurrently(lambda: click_request(g.url, SEQUENCE[:1], task_id=next(new_tasks))):
                assert resp.status_code == 200, resp.text
                pids.add(stats(resp)["pid"])
            if len(pids) == 2:
                break
        assert len(pids) == 2
        for n in range(1, len(SEQUENCE) + 1):
            resp = click_request(g.url, SEQUENCE[:n])
            assert (stats(resp)["cache"], stats(resp)["steps"], stats(resp)["cache_hit_clicks"]) == ("redis", 1, n - 1)
        last_pid = stats(resp)["pid"]
        expected = core_mask(predictor, IMAGE, SEQUENCE)
        other_worker_hits = []
        for _ in range(10):  # the worker that did not compute the last click continues from Redis
            for r in _concurrently(lambda: click_request(g.url, SEQUENCE)):
                np.testing.assert_array_equal(region_mask(r.json()["results"][0]["result"][0]), expected)
                assert stats(r)["steps"] == 0
                if stats(r)["pid"] != last_pid:
                    other_worker_hits.append(r)
            if other_worker_hits:
                break
        assert other_worker_hits
        r = redis.Redis.from_url(redis_url)
        keys = r.keys("focuscut:session:*")
        assert len(keys) >= len(SEQUENCE) and all(0 < r.ttl(k) <= 3600 for k in keys)  # states expire
        r.flushall()
        replayed = click_request(g.url, SEQUENCE)
        assert stats(replayed)["steps"] == len(SEQUENCE) and stats(replayed)["net_calls"] > len(SEQUENCE)
        np.testing.assert_array_equal(region_mask(replayed.json()["results"][0]["result"][0]), expected)


def test_a_worker_continues_its_live_session_without_the_store(tmp_path, predictor):
    with redis_server() as redis_url, image_server({UPLOAD: png_bytes(IMAGE)}) as ls, \
            gunicorn_server(env=base_env(tmp_path, ls.url, REDIS_URL=redis_url), workers=1, threads=1) as g:
        assert stats(click_request(g.url, SEQUENCE[:1]))["live_session"] is False
        for n in range(2, len(SEQUENCE) + 1):
            redis.Redis.from_url(redis_url).flushall()  # only the worker's live session holds click n - 1
            resp = click_request(g.url, SEQUENCE[:n])
            assert resp.status_code == 200, resp.text
            assert stats(resp)["live_session"] is True
            assert (stats(resp)["steps"], stats(resp)["cache_hit_clicks"]) == (1, n - 1)
            np.testing.assert_array_equal(region_mask(resp.json()["results"][0]["result"][0]),
                                          core_mask(predictor, IMAGE, SEQUENCE[:n]))
        back = click_request(g.url, SEQUENCE[:2])  # an earlier state: not alive, not stored: replayed
        assert (stats(back)["live_session"], stats(back)["steps"]) == (False, 2)


def test_predict_keeps_serving_when_redis_dies(tmp_path, predictor):
    with image_server({UPLOAD: png_bytes(IMAGE)}) as ls, contextlib.ExitStack() as redis_alive:
        redis_url = redis_alive.enter_context(redis_server())
        env = base_env(tmp_path, ls.url, REDIS_URL=redis_url, FOCUSCUT_LIVE_SESSIONS="0")
        with gunicorn_server(env=env, workers=1) as g:
            first = click_request(g.url, SEQUENCE[:1])
            assert first.status_code == 200 and stats(first)["cache"] == "redis"
            redis_alive.close()  # the redis-server process stops; gunicorn keeps running
            for n in (2, 3):
                resp = click_request(g.url, SEQUENCE[:n])
                assert resp.status_code == 200, resp.text
                assert stats(resp)["steps"] == n  # nothing could be read: replayed
                np.testing.assert_array_equal(region_mask(resp.json()["results"][0]["result"][0]),
                                              core_mask(predictor, IMAGE, SEQUENCE[:n]))
            assert "replaying clicks instead" in g.log()
