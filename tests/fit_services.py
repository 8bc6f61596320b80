"""Real processes for the fit tests: an RQ worker started the way deployments start it
(``scripts/launch worker``), and a Label Studio project export served on loopback."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ls_export_server import LabelStudioExport, export_server, synthetic_object
from services import ROOT

TOKEN = "fit-test-token-42"


@contextlib.contextmanager
def labelstudio_project(project: int, n_tasks: int, first_task: int = 1):
    """A loopback Label Studio export of ``project`` with ``n_tasks`` annotated synthetic images;
    yields (state, base URL)."""
    state = LabelStudioExport(TOKEN)
    for task_id in range(first_task, first_task + n_tasks):
        state.add(project, task_id, *synthetic_object(task_id))
    with export_server(state) as url:
        yield state, url


def worker_env(redis_url: str, ls_url: str, model_dir: Path, **extra) -> dict:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
            "REDIS_URL": redis_url, "LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": TOKEN,
            "FOCUSCUT_MODEL_DIR": str(model_dir), "FOCUSCUT_CACHE_DIR": str(model_dir / ".image-cache"),
            "FOCUSCUT_DEVICE": "cpu", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            # tiny budgets: one training step, two global-view robot clicks on one held-out mask
            "FOCUSCUT_TRAIN_MAX_STEPS": "1", "FOCUSCUT_TRAIN_MAX_SECONDS": "120", "FOCUSCUT_TRAIN_EVAL_SAMPLES": "1",
            "FOCUSCUT_TRAIN_EVAL_CLICKS": "2", "FOCUSCUT_TRAIN_EVAL_MODE": "global", **extra}


class Worker:
    def __init__(self, proc: subprocess.Popen, log_path: Path):
        self.proc, self.log_path = proc, log_path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout)

    def kill_all(self) -> None:
        """SIGKILL the worker and its work horse (the whole process group)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)


@contextlib.contextmanager
def rq_worker(env: dict, *args: str):
    """``scripts/launch worker ARGS`` (``rq worker --url $REDIS_URL ARGS focuscut``) in its own
    process group; stopped (SIGTERM, then SIGKILL) on exit."""
    log_path = Path(tempfile.mkdtemp(prefix="focuscut-worker-")) / "worker.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(["bash", str(ROOT / "scripts/launch"), "worker", *args], cwd=ROOT, env=env,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    worker = Worker(proc, log_path)
    try:
        yield worker
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                worker.kill_all()


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} within {timeout:.0f} s")
