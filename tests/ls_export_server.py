"""A loopback HTTP server answering the two Label Studio 1.23 endpoints the fit worker reads.

- ``GET /api/projects/<id>/export`` (what ``label_studio_sdk``'s ``projects.exports.download_sync``
  calls): the project's tasks as Label Studio 1.23's JSON export writes them (``make_task``).
- ``GET /data/upload/<project>/<file>``: the uploaded image files.

Both require ``Authorization: Token <token>`` (401 otherwise), as Label Studio does. A real
server on a real socket, not a mock: the worker talks to it through the SDK and the image fetcher.
"""
from __future__ import annotations

import contextlib
import io
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from label_studio_sdk.converter.brush import mask2rle
from PIL import Image

TIMESTAMP = "2026-11-25T14:00:00.000000Z"


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def brush_result(mask: np.ndarray, label: str = "Object", region_id: str = "r1") -> dict:
    """One brushlabels result item exactly as Label Studio stores it (RLE of an HxW 0/255 mask)."""
    height, width = mask.shape
    return {"original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"format": "rle", "rle": mask2rle(mask.astype(np.uint8)), "brushlabels": [label]},
            "id": region_id, "from_name": "tag", "to_name": "image", "type": "brushlabels", "origin": "manual"}


def make_task(task_id: int, project: int, file_name: str, results: list[dict], annotation_id: int | None = None,
              was_cancelled: bool = False, updated_at: str = TIMESTAMP) -> dict:
    """A task with one annotation in Label Studio 1.23's export JSON format."""
    annotation = {
        "id": annotation_id or task_id, "completed_by": 1, "result": results, "was_cancelled": was_cancelled,
        "ground_truth": False, "created_at": TIMESTAMP, "updated_at": updated_at, "draft_created_at": None,
        "lead_time": 21.4, "prediction": {}, "result_count": len(results),
        "unique_id": f"00000000-0000-4000-8000-{task_id:012d}", "import_id": None, "last_action": None,
        "bulk_created": False, "task": task_id, "project": project, "updated_by": 1,
        "parent_prediction": None, "parent_annotation": None, "last_created_by": None,
    }
    return {
        "id": task_id, "annotations": [annotation], "file_upload": file_name, "drafts": [], "predictions": [],
        "data": {"image": f"/data/upload/{project}/{file_name}"}, "meta": {}, "created_at": TIMESTAMP,
        "updated_at": updated_at, "allow_skip": True, "inner_id": task_id, "total_annotations": 1,
        "cancelled_annotations": int(was_cancelled), "total_predictions": 0, "comment_count": 0,
        "unresolved_comment_count": 0, "last_comment_updated_at": None, "project": project, "updated_by": 1,
        "comment_authors": [],
    }


def synthetic_object(seed: int, height: int = 96, width: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """(image HxWx3 uint8, mask HxW uint8 0/255): a textured ellipse on a noisy background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width]
    cy, cx = rng.uniform(0.35, 0.65) * height, rng.uniform(0.35, 0.65) * width
    ry, rx = rng.uniform(0.15, 0.3) * height, rng.uniform(0.15, 0.3) * width
    inside = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
    image = rng.integers(0, 90, (height, width, 3)).astype(np.uint8)
    image[inside] = (rng.integers(150, 255, (int(inside.sum()), 3))).astype(np.uint8)
    return image, np.where(inside, 255, 0).astype(np.uint8)


class LabelStudioExport:
    """State served by the server: ``tasks`` (export JSON list) per project and ``files``."""

    def __init__(self, token: str):
        self.token = token
        self.tasks: dict[int, list[dict]] = {}
        self.files: dict[str, bytes] = {}
        self.requests: list[str] = []

    def add(self, project: int, task_id: int, image: np.ndarray, mask: np.ndarray, **task_kwargs) -> dict:
        name = f"{task_id:08x}-image{task_id}.png"
        self.files[f"/data/upload/{project}/{name}"] = png_bytes(image)
        task = make_task(task_id, project, name, [brush_result(mask)], **task_kwargs)
        self.tasks.setdefault(project, []).append(task)
        return task


def _handler(state: LabelStudioExport):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802 (http.server's naming)
            state.requests.append(self.path)
            if self.headers.get("Authorization") != f"Token {state.token}":
                return self._send(401, b'{"detail":"Authentication credentials were not provided."}',
                                  "application/json")
            path = self.path.split("?", 1)[0]
            match = re.fullmatch(r"/api/projects/(\d+)/export/?", path)
            if match and int(match.group(1)) in state.tasks:
                return self._send(200, json.dumps(state.tasks[int(match.group(1))]).encode(), "application/json")
            if path in state.files:
                return self._send(200, state.files[path], "image/png")
            return self._send(404, b'{"detail":"Not found."}', "application/json")

    return Handler


@contextlib.contextmanager
def export_server(state: LabelStudioExport):
    """Serve ``state`` on 127.0.0.1 (a free port); yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
