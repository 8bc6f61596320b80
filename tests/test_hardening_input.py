"""A corpus of malformed and hostile requests over every route, against a real gunicorn (2
workers) with a misbehaving loopback image host standing in for Label Studio.

Each case has the exact status it must get. Figures: requests sent, 2xx/4xx/5xx, 500s (0),
gateway errors (only where the image host itself fails or stalls), gunicorn worker restarts (0),
and a normal click answering right after.
"""
from __future__ import annotations

import io
import json
import socket
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pytest
import requests
from PIL import Image

from hostile_host import Body, Drip, Hang, Redirect, Status, hostile_host
from image_server import png_bytes, sample_image
from ls_payloads import CONFIG, clicks_at, keypoint, predict_body, setup_body, task
from procs import children, record
from services import gunicorn_server
from test_images import png_header_only

TOKEN = "corpus-token-31337"
H, W = 60, 80
IMAGE = sample_image(H, W)
OK = "/data/upload/1/ok.png"
FETCH_TIMEOUT = 2.0


def _jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG")
    return buf.getvalue()


@dataclass
class Case:
    name: str
    status: int
    method: str = "POST"
    path: str = "/predict"
    json: object = None  # sent as JSON when ``raw`` is None
    raw: bytes | None = None  # sent as the body as it is
    headers: dict | None = None
    upstream: bool = False  # a 5xx caused by the image host (502/504), not by the backend


def one(**value) -> list[dict]:
    """One keypoint at the image centre with ``value`` fields replaced."""
    item = keypoint(50.0, 50.0, "Cat", True, (W, H))
    item["value"].update(value)
    return [item]


def with_item(**fields) -> list[dict]:
    item = keypoint(50.0, 50.0, "Cat", True, (W, H))
    item.update(fields)
    return [item]


def body(image: str = OK, results=None, **kw) -> dict:
    return predict_body([task(7, image)], clicks_at([(30, 40, True)], H, W) if results is None else results, **kw)


def raw_json(obj) -> bytes:
    """JSON with NaN/Infinity literals left as Python writes them."""
    return json.dumps(obj, allow_nan=True).encode()


UNICODE = "猫 🐈 Ünïcødé"
UNICODE_CONFIG = CONFIG.replace('"Cat"', f'"{UNICODE}"')
DUPLICATE_TAGS = CONFIG.replace('<Image name="image" value="$image" zoom="true"/>',
                                '<Image name="image" value="$image"/><Image name="image" value="$other"/>')
NO_BRUSH = '<View><Image name="image" value="$image"/><KeyPointLabels name="tag2" toName="image"><Label value="Cat"/></KeyPointLabels></View>'
NO_IMAGE = '<View><Text name="t" value="$t"/><Labels name="l" toName="t"><Label value="Cat"/></Labels></View>'
XXE = ('<?xml version="1.0"?><!DOCTYPE v [<!ENTITY x SYSTEM "file:///etc/hostname">]><View><Image name="image" '
       'value="$image"/><BrushLabels name="tag" toName="image"><Label value="&x;"/></BrushLabels></View>')
LAUGHS = ('<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "lol">' + "".join(
    f'<!ENTITY a{i} "{("&a;" if i == 0 else f"&a{i - 1};") * 10}">' for i in range(9))
    + ']><View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image"><Label value="&a8;"/>'
      '</BrushLabels></View>')


def corpus(ls_url: str) -> list[Case]:
    many = [{"type": "keypointlabels", "from_name": "tag2", "to_name": "image",  # the fields that count, 5000 times
             "value": {"x": 50.0 + i % 40 / 100, "y": 50.0, "keypointlabels": ["Cat"]}} for i in range(5000)]
    return [
        # --- bodies that are not a JSON object
        Case("truncated json", 400, raw=b'{"tasks": [{"id": 1, "data": {"ima'),
        Case("plain text", 400, raw=b"click here"),
        Case("empty body", 400, raw=b""),
        Case("json array", 400, json=[1, 2, 3]),
        Case("json string", 400, json="predict"),
        Case("json null", 400, raw=b"null"),
        Case("invalid utf-8", 400, raw=b'\xff\xfe{"tasks": \xc3\x28}'),
        Case("100000-deep nesting", 400, raw=b"[" * 100_000 + b"]" * 100_000),
        Case("deep nesting inside context", 400, json=body(results=one(x=json.loads("[" * 500 + "]" * 500)))),
        Case("multipart form", 415, raw=b"--b\r\nContent-Disposition: form-data; name=a\r\n\r\nx\r\n--b--\r\n",
             headers={"Content-Type": "multipart/form-data; boundary=b"}),
        Case("urlencoded form", 415, raw=b"tasks=1&project=2", headers={"Content-Type": "application/x-www-form-urlencoded"}),
        Case("1 MB + 1 body", 413, raw=b" " * ((1 << 20) + 1)),
        # --- wrong types in every field
        Case("tasks a string", 400, json={**body(), "tasks": "7"}),
        Case("tasks an object", 400, json={**body(), "tasks": {"id": 7}}),
        Case("tasks empty", 400, json={**body(), "tasks": []}),
        Case("task a number", 400, json={**body(), "tasks": [7]}),
        Case("task data a string", 422, json={**body(), "tasks": [{"id": 7, "data": "x"}]}),
        Case("image a number", 422, json={**body(), "tasks": [{"id": 7, "data": {"image": 12345}}]}),
        Case("image a list", 422, json={**body(), "tasks": [{"id": 7, "data": {"image": [OK]}}]}),
        Case("image empty", 422, json=body(image="")),
        Case("label_config a number", 400, json={**body(), "label_config": 12}),
        Case("label_config missing", 400, json={**body(), "label_config": None}),
        Case("params a string", 400, json={**body(), "params": "context"}),
        Case("context a list", 400, json={**body(), "params": {"context": []}}),
        Case("result an object", 400, json={**body(), "params": {"context": {"result": {"a": 1}}}}),
        Case("result item a string", 400, json=body(results=["keypoint"])),
        Case("value null", 400, json=body(results=with_item(value=None))),
        Case("x a string", 400, json=body(results=one(x="50"))),
        Case("x a bool", 400, json=body(results=one(x=True))),
        Case("x null", 400, json=body(results=one(x=None))),
        Case("is_positive a string", 400, json=body(results=with_item(is_positive="yes"))),
        Case("keypointlabels empty", 400, json=body(results=one(keypointlabels=[], labels=[]))),
        Case("keypointlabels a number", 400, json=body(results=one(keypointlabels=[5], labels=[5]))),
        Case("no to_name", 400, json=body(results=with_item(to_name=None))),
        # --- coordinates
        Case("x NaN", 422, raw=raw_json(body(results=one(x=float("nan"))))),
        Case("y Infinity", 422, raw=raw_json(body(results=one(y=float("inf"))))),
        Case("x -Infinity", 422, raw=raw_json(body(results=one(x=float("-inf"))))),
        Case("x 1e308", 422, json=body(results=one(x=1e308))),
        Case("y -1e308", 422, json=body(results=one(y=-1e308))),
        Case("x 1e400 (overflows to inf)", 422, raw=json.dumps(body(results=one(x=0.5))).replace("0.5", "1e400").encode()),
        Case("x 100.000001", 422, json=body(results=one(x=100.000001))),
        Case("x a 400-digit integer", 422, json=body(results=one(x=10 ** 400))),
        Case("5000 clicks", 422, json=body(results=many)),
        # --- labelling configs
        Case("config without BrushLabels", 422, json=body(config=NO_BRUSH)),
        Case("config without Image", 422, json=body(config=NO_IMAGE)),
        Case("config broken xml", 400, json=body(config="<View><Image name=")),
        Case("config with an external entity (XXE)", 400, json=body(config=XXE)),
        Case("config with a billion laughs", 400, json=body(config=LAUGHS)),
        Case("config with duplicate Image names", 422, json=body(config=DUPLICATE_TAGS)),
        Case("label not on any BrushLabels", 422, json=body(results=one(keypointlabels=["Horse"], labels=["Horse"]))),
        Case("keypoints from a non-keypoint tag", 422, json=body(results=with_item(from_name="tag"))),
        Case("lone surrogate label", 422, raw=json.dumps(body(results=one(keypointlabels=["X"], labels=["X"])))
             .replace('"X"', '"\\ud800"').encode()),
        Case("unicode labels (valid)", 200, json=body(config=UNICODE_CONFIG, results=one(keypointlabels=[UNICODE], labels=[UNICODE]))),
        Case("project an object (valid)", 200, json={**body(), "project": {"x": [1]}}),
        Case("project a path (valid)", 200, json={**body(), "project": "../../etc/passwd"}),
        # --- images
        Case("image host hangs", 504, json=body(image="/data/upload/1/hang.png"), upstream=True),
        Case("image host drips a byte at a time", 504, json=body(image="/data/upload/1/drip.png"), upstream=True),
        Case("image host answers 500", 502, json=body(image="/data/upload/1/error.png"), upstream=True),
        Case("image 404", 422, json=body(image="/data/upload/1/missing.png")),
        Case("redirect loop", 422, json=body(image="/data/upload/1/loop.png")),
        Case("redirect to a private address", 403, json=body(image="/data/upload/1/to-private.png")),
        Case("html instead of an image", 422, json=body(image="/data/upload/1/page.png")),
        Case("truncated jpeg", 422, json=body(image="/data/upload/1/cut.jpg")),
        Case("image over the pixel limit", 422, json=body(image="/data/upload/1/bomb.png")),
        Case("file:// image", 422, json=body(image="file:///etc/passwd")),
        Case("host off the allowlist", 403, json=body(image="http://example.com/cat.png")),
        Case("cloud metadata address", 403, json=body(image="http://169.254.169.254/latest/meta-data/")),
        Case("Label Studio API as an image", 403, json=body(image="/api/projects/1/export?exportType=JSON")),
        Case("local-files escaping its root", 403, json=body(image="/data/local-files/?d=../../etc/passwd")),
        Case("malformed URL", 422, json=body(image="http://[::1")),
        Case("100 kB image URL", 403, json=body(image="http://example.com/" + "a" * 100_000)),
        # --- /setup
        Case("setup truncated", 400, path="/setup", raw=b'{"project": "1.1'),
        Case("setup schema a number", 400, path="/setup", json={**setup_body(), "schema": 5}),
        Case("setup schema broken", 400, path="/setup", json=setup_body(config="<View")),
        Case("setup schema without brush", 422, path="/setup", json=setup_body(config=NO_BRUSH)),
        Case("setup project a list (valid)", 200, path="/setup", json={**setup_body(), "project": [1, 2]}),
        # --- /webhook
        Case("webhook not json", 400, path="/webhook", raw=b"action=START_TRAINING"),
        Case("webhook action a number", 400, path="/webhook", json={"action": 5, "project": 1}),
        Case("webhook project text", 400, path="/webhook", json={"action": "ANNOTATION_CREATED", "project": "abc"}),
        Case("webhook project a unicode digit", 400, path="/webhook", json={"action": "START_TRAINING", "project": "²"}),
        Case("webhook project an object of a list", 400, path="/webhook", json={"action": "START_TRAINING", "project": {"id": [1]}}),
        Case("webhook project 1e400", 400, path="/webhook", raw=b'{"action": "START_TRAINING", "project": 1e400}'),
        Case("webhook unknown action (ignored)", 200, path="/webhook", json={"action": "PROJECT_DELETED", "project": 1}),
        # --- job and version routes
        Case("unknown job", 404, "GET", "/jobs/fit-1-nothing"),
        Case("job id with traversal", 404, "GET", "/jobs/..%2F..%2Fetc%2Fpasswd"),
        Case("project jobs, text id", 400, "GET", "/projects/abc/jobs"),
        Case("project versions, text id", 400, "GET", "/projects/abc/versions"),
        Case("rollback a list body", 400, path="/projects/1/rollback", json=[]),
        Case("rollback version a number", 400, path="/projects/1/rollback", json={"version": 5}),
        Case("rollback version a path", 409, path="/projects/1/rollback", json={"version": "../../x"}),
        Case("rollback, nothing published", 409, path="/projects/1/rollback", json={}),
        Case("versions, body not json (valid)", 200, "GET", "/versions", raw=b"project=1"),
        # --- methods and paths
        Case("POST /health", 405, path="/health", json={}),
        Case("GET /predict", 405, "GET", "/predict"),
        Case("DELETE /setup", 405, "DELETE", "/setup"),
        Case("unknown route", 404, "GET", "/admin"),
    ]


def send(url: str, case: Case) -> requests.Response:
    if case.raw is not None:
        headers = {"Content-Type": "application/json", **(case.headers or {})}
        return requests.request(case.method, url + case.path, data=case.raw, headers=headers, timeout=60)
    return requests.request(case.method, url + case.path, json=case.json, headers=case.headers, timeout=60)


def raw_http(url: str, head: bytes, chunks=(), timeout: float = 30) -> bytes:
    """Send ``head`` (request line and headers) and ``chunks`` of body as they are; the answer's bytes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        s.sendall(head)
        try:
            for chunk in chunks:
                s.sendall(chunk)
            s.shutdown(socket.SHUT_WR)
        except OSError:  # the server answered and closed before reading everything: read the answer
            pass
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def raw_status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


@pytest.fixture(scope="module")
def served(tmp_path_factory, redis_server_url):
    tmp = tmp_path_factory.mktemp("corpus")
    jpeg = _jpeg(IMAGE)
    with hostile_host({"/secret": Body(b"internal")}, "127.0.0.2") as internal, hostile_host({
        OK: Body(png_bytes(IMAGE)),
        "/data/upload/1/hang.png": Hang(FETCH_TIMEOUT * 4),
        "/data/upload/1/drip.png": Drip(png_bytes(IMAGE), FETCH_TIMEOUT / 8),
        "/data/upload/1/error.png": Status(500),
        "/data/upload/1/loop.png": Redirect("/data/upload/1/loop.png"),
        "/data/upload/1/to-private.png": Redirect(internal.url + "/secret"),
        "/data/upload/1/page.png": Body(b"<html><body>Sign in</body></html>", "text/html"),
        "/data/upload/1/cut.jpg": Body(jpeg[: len(jpeg) // 2], "image/jpeg"),
        "/data/upload/1/bomb.png": Body(png_header_only(20_000, 20_000)),
    }) as ls:
        env = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": TOKEN, "REDIS_URL": redis_server_url,
               "FOCUSCUT_CACHE_DIR": str(tmp / "images"), "FOCUSCUT_MODEL_DIR": str(tmp / "models"),
               "FOCUSCUT_MAX_PIXELS": "1000000", "FOCUSCUT_FETCH_TIMEOUT": str(FETCH_TIMEOUT),
               "FOCUSCUT_MAX_BODY_MB": "1", "OMP_NUM_THREADS": "1", "FOCUSCUT_WEIGHTS": ""}
        with gunicorn_server(env=env, workers=2, threads=2) as g:
            yield g, ls, internal


def normal_click(url: str) -> requests.Response:
    return requests.post(url + "/predict", json=body(), timeout=120)


def test_hostile_corpus_gets_exact_4xx_and_no_restart(served):
    g, ls, internal = served
    assert normal_click(g.url).status_code == 200  # both workers warm: pids are settled
    workers_before = children(g.proc.pid)
    assert len(workers_before) == 2
    cases = corpus(ls.url)
    statuses, wrong, slowest = Counter(), [], (0.0, "")
    for case in cases:
        start = time.monotonic()
        resp = send(g.url, case)
        took = time.monotonic() - start
        slowest = max(slowest, (took, case.name))
        statuses[resp.status_code] += 1
        if resp.status_code != case.status:
            wrong.append((case.name, case.status, resp.status_code, resp.text[:200]))
            continue
        if resp.status_code >= 400:
            error = resp.json()["error"]
            assert isinstance(error, str) and error and "Traceback" not in resp.text, case.name
            assert len(resp.content) < 4000, (case.name, len(resp.content))  # no echo of huge input
        if resp.status_code >= 500:  # says which image and what went wrong, in bounded time
            assert case.upstream and took < 4 * FETCH_TIMEOUT, (case.name, took)
            assert "/data/upload/1/" in resp.json()["error"], resp.text
            assert any(w in resp.json()["error"] for w in ("timed out", "took over", "HTTP 500")), resp.text
    assert not wrong, wrong
    # HTTP-level abuse, written on a socket: lying and unparsable lengths, a chunked body over the cap
    head = "POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    raw = {
        "Content-Length says 2 MB, 1 kB sent": (f"{head}Content-Length: {2 << 20}\r\n\r\n", [b"{" * 1024], 413),
        "Content-Length not a number": (f"{head}Content-Length: lots\r\n\r\n", [b"{}"], 400),
        "Content-Length negative": (f"{head}Content-Length: -5\r\n\r\n", [b"{}"], 400),
        "body shorter than Content-Length": (f"{head}Content-Length: 500\r\n\r\n", [b'{"tasks": ['], 400),
        "chunked body over the cap": (f"{head}Transfer-Encoding: chunked\r\n\r\n",
                                      [b"10000\r\n" + b" " * 0x10000 + b"\r\n"] * 20 + [b"0\r\n\r\n"], 413),
        "chunked body, truncated json": (f"{head}Transfer-Encoding: chunked\r\n\r\n", [b"5\r\n{\"tas\r\n0\r\n\r\n"], 400),
        "request line over 8 kB": (f"GET /jobs/{'x' * 8200} HTTP/1.1\r\nHost: x\r\n\r\n", [], 414),
        "200 headers": ("GET /health HTTP/1.1\r\nHost: x\r\n" + "".join(f"X-{i}: y\r\n" for i in range(200)) + "\r\n",
                        [], 431),
    }
    for name, (text, chunks, status) in raw.items():
        got = raw_status(raw_http(g.url, text.encode(), chunks))
        statuses[got] += 1
        if got != status:
            wrong.append((name, status, got))
    assert not wrong, wrong
    after = normal_click(g.url)
    assert after.status_code == 200 and after.json()["results"][0]["result"][0]["type"] == "brushlabels"
    workers_after = children(g.proc.pid)
    assert workers_after == workers_before, "a gunicorn worker was restarted"
    assert internal.hits == []
    assert "Traceback" not in g.log()
    sent = len(cases) + len(raw)
    figures = {"requests": sent, "2xx": sum(n for s, n in statuses.items() if s < 300),
               "4xx": sum(n for s, n in statuses.items() if 400 <= s < 500),
               "5xx": sum(n for s, n in statuses.items() if s >= 500), "500": statuses[500],
               "502/504 from the image host": statuses[502] + statuses[504],
               "worker restarts": len(workers_before - workers_after), "normal click after": after.status_code,
               "slowest case": f"{slowest[1]} ({slowest[0]:.1f} s)", "statuses": dict(sorted(statuses.items()))}
    record("bad input corpus", figures)
    assert sent >= 50 and figures["500"] == 0 and figures["worker restarts"] == 0
