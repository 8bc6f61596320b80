"""Property-based fuzzing (hypothesis) of the request parser, the URL policy, the app's routes
in-process, and the brush RLE / mask path. The property everywhere: bad input raises the one
error type meant for clients (``RequestError`` / ``ValueError``) or answers a 4xx JSON error;
nothing else escapes, nothing hangs, and good input round-trips exactly.
"""
from __future__ import annotations

import base64
import json
import math
import time

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from backend import labeling
from backend.annotations import decode_region
from backend.errors import RequestError
from backend.url_policy import UrlPolicy, redact
from ls_payloads import CONFIG, predict_body, task

FAST = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                           max_leaves=20)
numbers = st.floats(allow_nan=True, allow_infinity=True) | st.integers(-10**400, 10**400) | scalars
keypoint_items = st.fixed_dictionaries(
    {"type": st.sampled_from(["keypointlabels", "KeyPointLabels", "brushlabels", 5, None])},
    optional={"value": st.fixed_dictionaries({}, optional={"x": numbers, "y": numbers,
                                                           "keypointlabels": st.lists(scalars, max_size=2) | scalars,
                                                           "labels": st.lists(scalars, max_size=2)}) | json_values,
              "is_positive": scalars, "from_name": scalars, "to_name": scalars})
contexts = st.fixed_dictionaries({}, optional={"result": st.lists(keypoint_items, max_size=6) | json_values}) | json_values


@FAST
@given(contexts)
def test_context_parser_only_raises_request_errors(context):
    try:
        clicked = labeling.parse_context(context, max_clicks=4)
    except RequestError as exc:
        assert 400 <= exc.status < 500 and exc.message
        return
    if clicked is not None:
        assert 1 <= len(clicked.points) <= 4 and isinstance(clicked.label, str) and isinstance(clicked.image, str)
        for p in clicked.points:
            assert 0 <= p.x <= 100 and 0 <= p.y <= 100 and isinstance(p.is_positive, bool)


@FAST
@given(st.text(max_size=300) | st.sampled_from([CONFIG, CONFIG[:-10], CONFIG.replace("BrushLabels", "Brush")]) | json_values)
def test_label_config_parser_only_raises_request_errors(xml):
    try:
        config = labeling.parse_label_config(xml)
    except RequestError as exc:
        assert 400 <= exc.status < 500
        return
    assert config.images and config.brushes


@FAST
@given(st.floats(0, 100), st.integers(1, 100_000), st.integers(1, 100_000))
def test_percent_clicks_land_inside_the_image(p, height, width):
    click, = labeling.to_clicks([labeling.Point(p, p, True)], height, width)
    assert 0 <= click.y < height and 0 <= click.x < width
    assert math.floor(click.y) == min(int(p / 100 * height), height - 1)


POLICY = UrlPolicy("http://ls.internal:8080/", ["*.images.example.com", "10.1.0.0/16"],
                   resolve=lambda host, port: ["10.1.2.3"] if host.endswith("images.example.com") else ["127.0.0.1"])


hosts = st.text(st.characters(blacklist_characters="§"), max_size=30)


@FAST
@given(hosts | st.builds(lambda scheme, host, path: f"{scheme}://u:§pw§@{host}/{path}?sig=§sig§",
                                        st.sampled_from(["http", "https", "file", "HTTP"]), hosts, hosts))
def test_url_policy_decides_every_string_and_redacts_it(url):
    try:
        POLICY.check(url)
    except RequestError as exc:
        assert exc.status in (403, 422) and "§" not in exc.message
    assert "§" not in redact(url)


# --- the app in-process: any JSON body to any route ----------------------------------------

@pytest.fixture(scope="module")
def client(tmp_path_factory):
    from backend import model, settings as settings_module
    from backend.api import create_app

    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("fuzz")
    env = {"LABEL_STUDIO_URL": "http://127.0.0.1:9/", "REDIS_URL": "", "FOCUSCUT_MODEL_DIR": str(tmp),
           "FOCUSCUT_CACHE_DIR": str(tmp / "c"), "FOCUSCUT_FETCH_TIMEOUT": "1", "FOCUSCUT_WEIGHTS": ""}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        settings_module.get.cache_clear()
        model.segmenter.cache_clear()
        yield create_app().test_client()
    settings_module.get.cache_clear()
    model.segmenter.cache_clear()


ROUTES = [("POST", "/predict"), ("POST", "/setup"), ("POST", "/webhook"), ("GET", "/versions"),
          ("POST", "/projects/1/rollback"), ("GET", "/jobs/x")]
predict_like = st.builds(lambda ctx, extra: {**predict_body([task(1, "/data/upload/1/x.png")], None), "params": {"context": ctx}, **extra},
                         contexts, st.dictionaries(st.sampled_from(["tasks", "project", "label_config", "params"]), json_values, max_size=2))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.sampled_from(ROUTES), json_values | predict_like | st.binary(max_size=200))
def test_routes_answer_json_and_never_500(client, route, payload):
    method, path = route
    if isinstance(payload, bytes):
        resp = client.open(path, method=method, data=payload, content_type="application/json")
    else:
        resp = client.open(path, method=method, data=json.dumps(payload), content_type="application/json")
    assert resp.status_code < 500 or resp.status_code in (502, 503, 504), resp.get_data(as_text=True)
    if resp.status_code >= 400:
        assert isinstance(resp.get_json()["error"], str)


# --- brush RLE ---------------------------------------------------------------------------

masks = st.tuples(st.integers(1, 40), st.integers(1, 40), st.integers(0, 2**32 - 1)).map(
    lambda t: np.random.default_rng(t[2]).random((t[0], t[1])) < np.random.default_rng(t[2]).random())


@FAST
@given(masks)
def test_rle_round_trips_any_mask(mask):
    h, w = mask.shape
    rle = mask2rle(mask.astype(np.uint8) * 255)
    decoded = decode_rle(rle).reshape(h, w, 4)[:, :, 3] > 127
    np.testing.assert_array_equal(decoded, mask)
    region = {"original_height": h, "original_width": w, "value": {"rle": rle}}
    np.testing.assert_array_equal(decode_region(region) == 255, mask)


@FAST
@given(masks, st.lists(st.integers(-5, 300), max_size=60), st.integers(0, 2**32 - 1), st.integers(-3, 50), st.integers(-3, 50))
def test_corrupt_rle_is_a_value_error_and_fast(mask, garbage, header, h, w):
    """Damaged, truncated, oversized-header or wrongly sized RLE: ValueError, in bounded time
    and memory (a header claiming 4 billion values is refused before decoding)."""
    rle = mask2rle(mask.astype(np.uint8) * 255)
    candidates = [rle[: len(rle) // 2], list(header.to_bytes(4, "big")) + rle[4:], garbage, rle + garbage]
    for candidate in candidates:
        region = {"original_height": h, "original_width": w, "value": {"rle": candidate}}
        start = time.monotonic()
        try:
            out = decode_region(region)
        except ValueError:
            pass
        else:
            assert out.shape == (h, w)
        assert time.monotonic() - start < 2.0


@pytest.fixture(scope="module")
def guarded_client(tmp_path_factory):
    from backend import settings as settings_module
    from backend.api import create_app

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BASIC_AUTH_USER", "ü-user")
        mp.setenv("BASIC_AUTH_PASS", "pä:ss")
        mp.setenv("FOCUSCUT_MODEL_DIR", str(tmp_path_factory.mktemp("auth")))
        settings_module.get.cache_clear()
        yield create_app().test_client()
    settings_module.get.cache_clear()


header_values = st.one_of(
    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=60),
    st.binary(max_size=40).map(lambda b: "Basic " + base64.b64encode(b).decode()),
    st.tuples(st.text(max_size=10), st.text(max_size=10)).map(
        lambda up: "Basic " + base64.b64encode(f"{up[0]}:{up[1]}".encode("utf-8", "surrogatepass")).decode()))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header_values)
def test_any_authorization_header_is_401_or_the_right_credentials(guarded_client, value):
    resp = guarded_client.get("/metrics", headers={"Authorization": value})
    assert resp.status_code == 401 and resp.get_json()["error"]
    good = "Basic " + base64.b64encode("ü-user:pä:ss".encode()).decode()
    assert guarded_client.get("/metrics", headers={"Authorization": good}).status_code == 200
