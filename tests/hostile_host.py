"""A misbehaving image host on loopback (a real http.server thread) for the hardening tests.

    with hostile_host({"/a.png": Body(png), "/r": Redirect("/r"), "/slow": Hang(10)}, "127.0.0.2") as h:
        h.url        # http://127.0.0.2:<port>
        h.hits       # [(path, headers dict)] of every request that reached it

Behaviours: ``Body(data, type)`` answers 200; ``Redirect(location, status)``; ``Hang(seconds)``
sends nothing for that long; ``Drip(data, interval)`` sends headers, then one byte per interval;
``Status(code)`` answers that code. Unknown paths answer 404.
"""
from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Body:
    data: bytes
    type: str = "image/png"


@dataclass
class Redirect:
    location: str
    status: int = 302


@dataclass
class Hang:
    seconds: float


@dataclass
class Drip:
    data: bytes
    interval: float


@dataclass
class Status:
    code: int


class _Handler(BaseHTTPRequestHandler):
    server: "_Host"

    def do_GET(self):  # noqa: N802 (http.server's name)
        host = self.server
        with host.lock:
            host.hits.append((self.path, dict(self.headers)))
        how = host.routes.get(self.path)
        try:
            self._answer(how)
        except OSError:  # the client gave up (a timeout test): nothing to answer
            pass

    def _answer(self, how):
        if isinstance(how, Hang):
            time.sleep(how.seconds)
            return
        if isinstance(how, Redirect):
            self.send_response(how.status)
            self.send_header("Location", how.location)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if isinstance(how, Status) or how is None:
            self.send_response(how.code if how else 404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", getattr(how, "type", "image/png"))
        self.send_header("Content-Length", str(len(how.data)))
        self.end_headers()
        if isinstance(how, Drip):
            for i in range(len(how.data)):
                self.wfile.write(how.data[i:i + 1])
                self.wfile.flush()
                time.sleep(how.interval)
        else:
            self.wfile.write(how.data)

    def log_message(self, *args):
        pass


class _Host(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, routes: dict, address: str):
        super().__init__((address, 0), _Handler)
        self.routes, self.hits, self.lock = dict(routes), [], threading.Lock()
        self.url = f"http://{address}:{self.server_address[1]}"


@contextlib.contextmanager
def hostile_host(routes: dict, address: str = "127.0.0.1"):
    host = _Host(routes, address)
    thread = threading.Thread(target=host.serve_forever, daemon=True)
    thread.start()
    try:
        yield host
    finally:
        host.shutdown()
        host.server_close()
