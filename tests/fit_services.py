"""Real processes for the fit tests: an RQ worker started the way deployments start it
(``scripts/launch worker``), and a Label Studio project export served on loopback."""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

from ls_export_server import LabelStudioExport, export_server, synthetic_object
from services import launched

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
    return {"REDIS_URL": redis_url, "LABEL_STUDIO_URL": ls_url, "LABEL_STUDIO_API_KEY": TOKEN,
            "FOCUSCUT_MODEL_DIR": str(model_dir), "FOCUSCUT_CACHE_DIR": str(model_dir / ".image-cache"),
            "FOCUSCUT_DEVICE": "cpu",
            # tiny budgets: one training step, two global-view robot clicks on one held-out mask
            "FOCUSCUT_TRAIN_MAX_STEPS": "1", "FOCUSCUT_TRAIN_MAX_SECONDS": "120", "FOCUSCUT_TRAIN_EVAL_SAMPLES": "1",
            "FOCUSCUT_TRAIN_EVAL_CLICKS": "2", "FOCUSCUT_TRAIN_EVAL_MODE": "global", **extra}


def rq_worker(env: dict, *args: str):
    """``scripts/launch worker ARGS`` (``rq worker --url $REDIS_URL ARGS focuscut``), the command
    deployments run, in its own process group (``services.launched``)."""
    return launched("worker", *args, env=env)


def wait_until(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"{what} within {timeout:.0f} s")
