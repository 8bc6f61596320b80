"""Real services for the tests: a redis-server on a free port, gunicorn serving the backend.

Nothing here is mocked: ``redis_server`` starts the distribution's ``redis-server`` binary in a
temporary directory; ``gunicorn_server`` starts ``gunicorn backend.wsgi:app`` as a subprocess.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            if predicate():
                return
        time.sleep(interval)
    raise TimeoutError(f"{what} did not come up within {timeout:.0f} s")


def stop_process_group(proc: subprocess.Popen, grace: float) -> None:
    """SIGTERM the process group that ``proc`` leads (started with start_new_session=True),
    SIGKILL it after ``grace`` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def redis_server(port: int | None = None, appendonly: bool = False, data_dir: Path | None = None):
    """A redis-server on 127.0.0.1:``port`` (a free one by default) over ``data_dir`` (a fresh
    temporary one, removed afterwards, by default); yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
    port = port or free_port()
    workdir = str(data_dir) if data_dir else tempfile.mkdtemp(prefix="focuscut-redis-")
    args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", workdir, "--save", "",
            "--appendonly", "yes" if appendonly else "no", "--daemonize", "no"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: _port_open(port), 10, "redis-server")
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(5)
        if proc.poll() is None:
            proc.kill()
        if not data_dir:
            shutil.rmtree(workdir, ignore_errors=True)


class Gunicorn:
    """A running gunicorn: ``url``, ``proc``, ``log()``."""

    def __init__(self, proc: subprocess.Popen, url: str, log_path: Path):
        self.proc, self.url, self.log_path = proc, url, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def gunicorn_server(env: dict | None = None, workers: int = 1, threads: int = 2, timeout: float = 120,
                    app: str = "backend.wsgi:app"):
    """gunicorn serving ``app`` on a free port with ``env`` added to the environment."""
    port = free_port()
    log_dir = Path(tempfile.mkdtemp(prefix="focuscut-gunicorn-"))
    log_path = log_dir / "gunicorn.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(workers),
           "--threads", str(threads), "--timeout", "300", app]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def healthy():
        if proc.poll() is not None:
            raise RuntimeError(f"gunicorn exited:\n{log_path.read_text(errors='replace')}")
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200

    try:
        wait_for(healthy, timeout, "gunicorn")
        yield Gunicorn(proc, url, log_path)
    finally:
        stop_process_group(proc, 15)


class Launched:
    """A process started by ``launched``: ``proc``, ``log()``; ``returncode`` once stopped."""

    def __init__(self, proc: subprocess.Popen, log_path: Path):
        self.proc, self.log_path = proc, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode


@contextlib.contextmanager
def launched(*args: str, env: dict | None = None):
    """``scripts/launch ARGS`` (``web``, ``worker``, ``scheduler``: the command lines that
    scripts/serve and the Docker image run) with ``env`` added and this Python's bin first on
    PATH; stopped with SIGTERM on exit (SIGKILL after 30 s)."""
    log_path = Path(tempfile.mkdtemp(prefix="focuscut-launch-")) / "process.log"
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **(env or {})}
    full_env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{full_env.get('PATH', '')}"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([str(ROOT / "scripts" / "launch"), *args], cwd=ROOT, env=full_env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield Launched(proc, log_path)
    finally:
        stop_process_group(proc, 30)
