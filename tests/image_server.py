"""A real HTTP server on loopback (a python http.server thread) that serves test files, as an
image host or as Label Studio's /data/upload/... would, and records what it was asked.

    with image_server({"/data/upload/1/a.png": png_bytes}) as srv:
        srv.url                    # http://127.0.0.1:<port>
        srv.requests               # [(path, headers dict)] in arrival order
        srv.files["/x"] = b"..."   # add files while it runs; unknown paths answer 404
        srv.delay = 2.0            # seconds to wait before answering
"""
from __future__ import annotations

import contextlib
import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
from PIL import Image


def png_bytes(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "PNG")
    return buf.getvalue()


def sample_image(height: int = 90, width: int = 120, seed: int = 0) -> np.ndarray:
    """An HxWx3 uint8 picture with a bright ellipse on a noisy darker background."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 60, (height, width, 3), dtype=np.uint8)
    rows, cols = np.mgrid[:height, :width]
    inside = ((rows - height / 2) / (height / 4)) ** 2 + ((cols - width / 2) / (width / 4)) ** 2 <= 1
    image[inside] = (220, 180, 40)
    return image


class _Handler(BaseHTTPRequestHandler):
    server: "_Server"

    def do_GET(self):  # noqa: N802 (http.server's name)
        srv = self.server
        with srv.lock:
            srv.requests.append((self.path, dict(self.headers)))
            body = srv.files.get(self.path)
        if srv.delay:
            time.sleep(srv.delay)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, files: dict):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files = dict(files)
        self.requests: list[tuple[str, dict]] = []
        self.delay = 0.0
        self.lock = threading.Lock()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def paths(self) -> list[str]:
        with self.lock:
            return [p for p, _ in self.requests]


@contextlib.contextmanager
def image_server(files: dict | None = None):
    srv = _Server(files or {})
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
