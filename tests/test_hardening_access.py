"""Access: which image URLs the backend fetches (SSRF), basic auth on every route but /health,
and secrets (API token, basic-auth password, presigned signatures) never in logs or answers.

Image hosts are real loopback servers: "Label Studio" on 127.0.0.1, an "internal service" on
127.0.0.2 that must never be reached, an allowed private host on 127.0.0.3.
"""
from __future__ import annotations

import base64

import numpy as np
import pytest
import requests

from backend.errors import RequestError
from backend.images import MAX_REDIRECTS, ImageFetcher
from backend.url_policy import UrlPolicy, redact
from hostile_host import Body, Redirect, hostile_host
from image_server import png_bytes, sample_image
from ls_payloads import clicks_at, predict_body, setup_body, task
from services import gunicorn_server

TOKEN = "ls-token-SECRET-4711"
IMAGE = sample_image(30, 40)
PNG = png_bytes(IMAGE)


@pytest.fixture(scope="module")
def hosts():
    """(label studio, internal, allowed private) hosts; Label Studio redirects to the others."""
    with hostile_host({"/secret": Body(b"internal data", "text/plain")}, "127.0.0.2") as internal, \
            hostile_host({"/ok.png": Body(PNG)}, "127.0.0.3") as allowed, \
            hostile_host({}, "127.0.0.1") as ls:
        ls.routes.update({
            "/data/upload/1/a.png": Body(PNG),
            "/data/upload/1/to-internal.png": Redirect(internal.url + "/secret"),
            "/data/upload/1/to-localhost.png": Redirect(f"http://localhost:{internal.server_address[1]}/secret"),
            "/data/upload/1/to-metadata.png": Redirect("http://169.254.169.254/latest/meta-data/"),
            "/data/upload/1/to-file.png": Redirect("file:///etc/passwd"),
            "/data/upload/1/to-allowed.png": Redirect(allowed.url + "/ok.png"),
            "/data/upload/1/to-api.png": Redirect("/api/projects/1/export?exportType=JSON"),
            "/data/upload/1/loop.png": Redirect("/data/upload/1/loop.png"),
        })
        for i in range(MAX_REDIRECTS):
            ls.routes[f"/data/upload/1/hop{i}.png"] = Redirect(f"/data/upload/1/hop{i + 1}.png")
        ls.routes[f"/data/upload/1/hop{MAX_REDIRECTS}.png"] = Body(PNG)
        yield ls, internal, allowed


def fetcher(ls, allowed=(), resolve=None) -> ImageFetcher:
    policy = UrlPolicy(ls.url, allowed, resolve)
    return ImageFetcher(ls.url, TOKEN, allow_url=policy.check, http=policy.session())


def refused(f: ImageFetcher, reference: str) -> RequestError:
    with pytest.raises(RequestError) as info:
        f.load(reference)
    return info.value


def test_label_studio_data_paths_load_and_carry_the_token(hosts):
    ls, internal, _ = hosts
    f = fetcher(ls)
    np.testing.assert_array_equal(f.load("/data/upload/1/a.png"), IMAGE)
    np.testing.assert_array_equal(f.load("/data/upload/1/hop0.png"), IMAGE)  # MAX_REDIRECTS hops: fine
    assert all(h.get("Authorization") == f"Token {TOKEN}" for _, h in ls.hits)


@pytest.mark.parametrize("reference, status, words", [
    ("/data/upload/1/to-internal.png", 403, "not allowed"),
    ("/data/upload/1/to-localhost.png", 403, "not allowed"),
    ("/data/upload/1/to-metadata.png", 403, "not allowed"),
    ("/data/upload/1/to-file.png", 422, "only http(s)"),
    ("/data/upload/1/to-api.png", 403, "not a Label Studio data path"),
    ("/data/upload/1/loop.png", 422, f"more than {MAX_REDIRECTS}"),
    ("/api/projects/1/export?exportType=JSON", 403, "not a Label Studio data path"),
    ("/data/upload/../../api/projects", 403, "data path"),
    ("/data/upload/1/%2e%2e/%2E%2E/api/projects", 403, "leaves Label Studio's data paths"),
    ("/data/local-files/?d=../../etc/passwd", 403, "LOCAL_FILES_DOCUMENT_ROOT"),
    ("/data/local-files/?d=%2Fetc%2Fpasswd", 403, "LOCAL_FILES_DOCUMENT_ROOT"),
    ("/data/local-files/?d=pics/..%2F..%2Fsecret", 403, "LOCAL_FILES_DOCUMENT_ROOT"),
    ("http://169.254.169.254/latest/meta-data/iam/", 403, "not allowed"),
    ("http://example.com/cat.png", 403, "FOCUSCUT_ALLOWED_HOSTS"),
    ("file:///etc/passwd", 422, "only http(s)"),
    ("gopher://127.0.0.2:70/_x", 422, "only http(s)"),
])
def test_default_policy_refuses_before_connecting(hosts, reference, status, words):
    """Default: Label Studio's data paths only. The internal host is never reached."""
    ls, internal, _ = hosts
    before = len(internal.hits)
    error = refused(fetcher(ls), reference)
    assert (error.status, words in error.message) == (status, True), error.message
    assert len(internal.hits) == before
    assert TOKEN not in error.message


@pytest.mark.parametrize("host", ["127.0.0.2", "localhost", "[::1]", "2130706434", "0.0.0.0", "127.1",
                                  "[::ffff:127.0.0.2]"])
def test_any_host_allowed_still_refuses_private_addresses(hosts, host):
    """FOCUSCUT_ALLOWED_HOSTS=* admits every host name, never a non-public address, however spelled."""
    ls, internal, _ = hosts
    port = internal.server_address[1]
    before = len(internal.hits)
    error = refused(fetcher(ls, ["*"]), f"http://{host}:{port}/secret")
    assert error.status == 403 and "non-public address" in error.message, error.message
    assert len(internal.hits) == before


def test_names_and_networks_in_the_allowlist(hosts):
    ls, internal, allowed = hosts
    port = allowed.server_address[1]
    np.testing.assert_array_equal(fetcher(ls, ["127.0.0.3/32"]).load(allowed.url + "/ok.png"), IMAGE)
    redirected = fetcher(ls, ["127.0.0.3/32"]).load("/data/upload/1/to-allowed.png")
    np.testing.assert_array_equal(redirected, IMAGE)
    assert all("Authorization" not in h for _, h in allowed.hits)  # the token stays with Label Studio
    # a name on the list that resolves to a private address needs its network listed too
    assert "non-public" in refused(fetcher(ls, ["localhost"]), f"http://localhost:{port}/ok.png").message
    assert "not allowed" in refused(fetcher(ls, ["localhost:1"]), f"http://localhost:{port}/ok.png").message
    policy = UrlPolicy(ls.url, ["*.images.example.com", "cdn.example.org:8443"], resolve=lambda h, p: ["93.184.215.14"])
    policy.check("https://a.b.images.example.com/x.png")
    policy.check("https://cdn.example.org:8443/x.png")
    for url in ("https://images.example.com.evil.net/x", "https://evilimages.example.com/x",
                "https://cdn.example.org/x", "https://cdn.example.org:8444/x"):
        with pytest.raises(RequestError, match="not allowed"):
            policy.check(url)


def test_no_dns_lookup_for_hosts_off_the_list(hosts):
    ls, *_ = hosts
    lookups = []
    policy = UrlPolicy(ls.url, ["images.example.com"], resolve=lambda h, p: lookups.append(h) or ["93.184.215.14"])
    with pytest.raises(RequestError):
        policy.check("http://attacker.example.net/x.png")
    assert lookups == []


def test_dns_answer_that_changes_after_the_check_is_caught_at_the_socket(hosts):
    """DNS rebinding: the check sees a public address, the connection reaches loopback; the
    peer check refuses as the socket connects, before the request is sent."""
    ls, internal, _ = hosts
    before = len(internal.hits)
    f = fetcher(ls, ["*"], resolve=lambda h, p: ["93.184.215.14"])
    error = refused(f, internal.url + "/secret")
    assert error.status == 403 and "resolves to 127.0.0.2" in error.message, error.message
    assert len(internal.hits) == before


def test_redact_drops_credentials_and_query():
    assert redact("https://user:pw@bucket.s3.amazonaws.com:9000/a/b.png?X-Amz-Signature=abc&t=1") == \
        "https://bucket.s3.amazonaws.com:9000/a/b.png"
    assert redact("http://[::1]:80/x?y") == "http://[::1]:80/x"


# --- basic auth and secrets, through gunicorn -------------------------------------------------

USER, PASSWORD = "annotator-bot", "pa55-SECRET-9876"
SIGNATURE = "X-Amz-Signature=deadbeefSECRET42"


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, hosts):
    ls, *_ = hosts
    tmp = tmp_path_factory.mktemp("auth")
    env = {"LABEL_STUDIO_URL": ls.url, "LABEL_STUDIO_API_KEY": TOKEN, "REDIS_URL": "",
           "BASIC_AUTH_USER": USER, "BASIC_AUTH_PASS": PASSWORD, "FOCUSCUT_FETCH_TIMEOUT": "3",
           "FOCUSCUT_CACHE_DIR": str(tmp / "images"), "FOCUSCUT_MODEL_DIR": str(tmp / "models"),
           "FOCUSCUT_ALLOWED_HOSTS": "127.0.0.3/32", "OMP_NUM_THREADS": "1", "FOCUSCUT_WEIGHTS": ""}
    with gunicorn_server(env=env, workers=1, threads=2) as g:
        yield g


def _basic(user: str, password: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


ROUTES = [("POST", "/predict"), ("POST", "/setup"), ("POST", "/webhook"), ("GET", "/versions"),
          ("GET", "/metrics"), ("GET", "/"), ("GET", "/jobs/x"), ("GET", "/projects/1/jobs"),
          ("GET", "/projects/1/versions"), ("POST", "/projects/1/rollback")]


def test_basic_auth_guards_every_route_but_health(guarded):
    g = guarded
    assert requests.get(g.url + "/health", timeout=10).status_code == 200
    wrong = [None, _basic(USER, "guess"), _basic("admin", PASSWORD), {"Authorization": "Basic !!notbase64"},
             {"Authorization": f"Token {PASSWORD}"}, _basic(USER, PASSWORD + "x")]
    for method, route in ROUTES:
        for headers in wrong:
            resp = requests.request(method, g.url + route, json={}, headers=headers, timeout=30)
            assert resp.status_code == 401, (route, headers, resp.text)
            assert resp.headers["WWW-Authenticate"].startswith("Basic") and resp.json()["error"]
        ok = requests.request(method, g.url + route, json={}, headers=_basic(USER, PASSWORD), timeout=60)
        assert ok.status_code != 401, (route, ok.text)


def test_secrets_stay_out_of_answers_and_logs(guarded, hosts):
    """Requests that fail in every way that mentions a URL or a credential; then the answers
    and gunicorn's whole log are searched for the token, the password and the signature."""
    g = guarded
    ls, internal, allowed = hosts
    auth = _basic(USER, PASSWORD)
    references = ["/data/upload/1/missing.png", "/data/upload/1/to-internal.png", "/api/projects/1/export",
                  f"{allowed.url}/gone.png?{SIGNATURE}", f"http://{USER}:{PASSWORD}@127.0.0.3:1/x.png?{SIGNATURE}",
                  f"http://example.com/x.png?{SIGNATURE}", f"file:///etc/passwd?{SIGNATURE}"]
    answers = []
    for ref in references:
        body = predict_body([task(3, ref)], clicks_at([(5, 5, True)], 30, 40))
        body["params"].update(login=USER, password=PASSWORD)
        resp = requests.post(g.url + "/predict", json=body, headers=auth, timeout=60)
        assert 400 <= resp.status_code < 500 or resp.status_code in (502, 504), (ref, resp.text)
        answers.append(resp.text)
    answers.append(requests.post(g.url + "/setup", json=setup_body(), headers=auth, timeout=60).text)
    forged = predict_body([task(3, "/data/upload/1/a.png")], clicks_at([(5, 5, True)], 30, 40),
                          project="1\nFORGED-LOG-LINE secret rotated")  # a newline must not forge a log line
    assert requests.post(g.url + "/predict", json=forged, headers=auth, timeout=120).status_code == 200
    answers.append(requests.post(g.url + "/predict", json={"tasks": 1}, headers=_basic(USER, "x" + PASSWORD),
                                 timeout=30).text)
    text = "\n".join(answers) + g.log()
    for secret in (TOKEN, PASSWORD, SIGNATURE, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode(),
                   setup_body()["access_token"]):
        assert secret not in text, secret
    assert "/data/upload/1/missing.png answered HTTP 404" in text  # the errors still say what failed
    assert "FORGED-LOG-LINE" in g.log() and not any(line.startswith("FORGED") for line in g.log().splitlines())


# --- Flask/Werkzeug configuration --------------------------------------------------------------

def test_no_debugger_and_half_set_auth_refuses_to_start(monkeypatch, tmp_path):
    """FLASK_DEBUG/FLASK_ENV cannot switch on debug behaviour: an unexpected exception is a JSON
    500 with no traceback and no Werkzeug debugger page. One of BASIC_AUTH_USER/PASS alone is a
    configuration error at start, not a silently open backend."""
    from backend import settings as settings_module
    from backend.api import create_app

    monkeypatch.setenv("FLASK_DEBUG", "1")
    monkeypatch.setenv("FLASK_ENV", "development")
    monkeypatch.setenv("FOCUSCUT_MODEL_DIR", str(tmp_path))
    settings_module.get.cache_clear()
    try:
        app = create_app()
        assert not app.debug and not app.config["PROPAGATE_EXCEPTIONS"]
        app.add_url_rule("/boom", "boom", lambda: 1 / 0)
        resp = app.test_client().get("/boom")
        text = resp.get_data(as_text=True)
        assert resp.status_code == 500 and resp.get_json()["error"].startswith("internal error (ZeroDivisionError)")
        assert "Traceback" not in text and "Werkzeug" not in text and "console" not in text
        monkeypatch.setenv("BASIC_AUTH_USER", "only-the-user")
        settings_module.get.cache_clear()
        with pytest.raises(ValueError, match="BASIC_AUTH_USER and BASIC_AUTH_PASS"):
            create_app()
    finally:
        settings_module.get.cache_clear()


@pytest.mark.parametrize("name, value, message", [("FOCUSCUT_MODE", "fastest", "mode must be one of"),
                                                  ("FOCUSCUT_FLIP", "vertical", "flip must be one of")])
def test_bad_inference_settings_refuse_to_start(monkeypatch, tmp_path, name, value, message):
    """A mistyped inference setting stops the worker at start with what is wrong, instead of
    answering every /predict with a 500."""
    from backend import settings as settings_module
    from backend.api import create_app

    monkeypatch.setenv("FOCUSCUT_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv(name, value)
    settings_module.get.cache_clear()
    try:
        with pytest.raises(ValueError, match=message):
            create_app()
    finally:
        settings_module.get.cache_clear()
