"""A real Label Studio 1.23.2 server for tests (reusable harness).

    from labelstudio import label_studio_server
    with label_studio_server(local_files_root=some_dir) as ls:
        ls.url, ls.token          # http://127.0.0.1:<port>, a legacy API token ("Authorization: Token ...")
        ls.headers                # {"Authorization": "Token <token>"}
        ls.log()                  # the server's output so far

Label Studio lives in its own virtual environment, ``~/.cache/focuscut-ls-venv`` (override with
FOCUSCUT_LS_VENV), installed with pip from the registry on first use (about 1 GB, a minute or
two). Each server gets a fresh temporary data directory (sqlite), a free port, and the settings
of ../shared/docs/label-studio.md: no version check or analytics, local URLs allowed for ML
backends and webhooks, a default user with a legacy token, local files served from
``local_files_root``. First start runs the migrations (about 30 s on an idle machine).
"""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from services import free_port, stop_process_group

VERSION = "1.23.2"
VENV = Path(os.environ.get("FOCUSCUT_LS_VENV", Path.home() / ".cache" / "focuscut-ls-venv"))
_MARKER = VENV / ".focuscut-complete"
USERNAME = "tester@example.com"
PASSWORD = "focuscut-tests-pass"


def ensure_installed(python: str | None = None) -> Path:
    """The ``label-studio`` executable of the venv, installing label-studio==1.23.2 if absent."""
    executable = VENV / "bin" / "label-studio"
    if _MARKER.exists() and _MARKER.read_text().strip() == VERSION and executable.exists():
        return executable
    if not (VENV / "bin" / "python").exists():
        subprocess.run([python or sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run([str(VENV / "bin" / "python"), "-m", "pip", "install", "-q", f"label-studio=={VERSION}"],
                   check=True, timeout=1800)
    _MARKER.write_text(VERSION)
    return executable


@dataclass
class LabelStudio:
    url: str
    token: str
    data_dir: Path
    proc: subprocess.Popen
    log_path: Path

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Token {self.token}"}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def _environment(data_dir: Path, token: str, local_files_root: Path | None, extra: dict | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update({
        "PATH": f"{VENV / 'bin'}:{env.get('PATH', '')}",
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "LABEL_STUDIO_USERNAME": USERNAME,
        "LABEL_STUDIO_PASSWORD": PASSWORD,
        "LABEL_STUDIO_USER_TOKEN": token,
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(local_files_root or data_dir),
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra or {})
    return env


@contextlib.contextmanager
def label_studio_server(local_files_root: Path | None = None, env: dict | None = None, timeout: float = 420):
    """A running Label Studio on 127.0.0.1:<free port>; stopped (and its data removed) on exit."""
    executable = ensure_installed()
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix="focuscut-ls-"))
    token = secrets.token_hex(20)
    url = f"http://127.0.0.1:{port}"
    log_path = data_dir / "label-studio.log"
    cmd = [str(executable), "start", "--no-browser", "--port", str(port), "--host", url,
           "--enable-legacy-api-token"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=data_dir, env=_environment(data_dir, token, local_files_root, env),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    server = LabelStudio(url, token, data_dir, proc, log_path)

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"label-studio exited with {proc.returncode}:\n{server.log()[-5000:]}")
        with contextlib.suppress(requests.RequestException):
            return requests.get(url + "/api/current-user/whoami", headers=server.headers, timeout=5).ok
        return False

    try:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                raise TimeoutError(f"Label Studio did not answer within {timeout:.0f} s:\n{server.log()[-5000:]}")
            time.sleep(1.0)
        yield server
    finally:
        stop_process_group(proc, 20)
        shutil.rmtree(data_dir, ignore_errors=True)
