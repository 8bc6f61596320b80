"""Task images: resolve a Label Studio image reference, download it (authorised, time- and
size-limited, cached on disk), and decode it to an HxWx3 uint8 RGB array (EXIF orientation
applied, pixel count checked from the header before decoding).

Shared by the serving process and the fit worker: build one with ``ImageFetcher.from_settings()``.
Every failure is a ``RequestError`` (4xx for a bad reference or file, 502/504 for a failing host).
A URL policy slots in as ``allow_url(url)``: it raises ``RequestError`` to refuse a URL before it
is connected to; ``http`` is the requests session to fetch with. ``from_settings`` uses
``backend.url_policy.UrlPolicy`` for both (Label Studio + FOCUSCUT_ALLOWED_HOSTS, no private
addresses, each connection's peer address checked). Redirects are followed by hand, at most ``MAX_REDIRECTS``, each hop checked
again; the Label Studio token goes only to Label Studio's origin. The whole download, however
slowly the host drips bytes, ends after the fetch timeout.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import tempfile
import threading
import time
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Callable
from urllib.parse import urljoin, urlsplit

import numpy as np
import requests
import urllib3
from PIL import Image, ImageOps, UnidentifiedImageError

from focuscut_core.views import as_rgb_uint8

from . import settings as settings_module
from .errors import RequestError
from .url_policy import UrlPolicy, redact

log = logging.getLogger(__name__)
_CHUNK = 1 << 16
MAX_REDIRECTS = 5


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, f"{(parts.hostname or '').lower()}:{port}"


def decode_image(data: bytes, max_pixels: int) -> np.ndarray:
    """HxWx3 uint8 RGB from an encoded image file, upright as its EXIF orientation says.

    Refuses (422) data that is not an image, an image over ``max_pixels`` (read from the header,
    before any pixel is decoded) and truncated data.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:
        raise RequestError(f"image is over the limit of {max_pixels} pixels (FOCUSCUT_MAX_PIXELS): {exc}",
                           422) from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise RequestError("the image URL did not return an image file", 422) from exc
    width, height = img.size
    if width * height > max_pixels:
        raise RequestError(f"image is {width}x{height} = {width * height} pixels, over the limit of "
                           f"{max_pixels} (FOCUSCUT_MAX_PIXELS)", 422)
    try:
        img = ImageOps.exif_transpose(img)
        if img.mode.startswith("I;16"):
            return as_rgb_uint8(np.asarray(img).astype(np.uint16))
        return np.ascontiguousarray(np.asarray(img.convert("RGB")))
    except (OSError, ValueError, SyntaxError) as exc:
        raise RequestError(f"the image file is corrupt or truncated: {exc}", 422) from exc


class DiskCache:
    """Downloaded files under ``root``, named by the SHA-256 of their URL, total size capped at
    ``max_bytes`` (least recently used evicted first). Safe for several processes: files are
    written to a temporary name and renamed."""

    def __init__(self, root: Path, max_bytes: int):
        self.root, self.max_bytes = Path(root), max_bytes

    def _path(self, key: str) -> Path:
        return self.root / hashlib.sha256(key.encode()).hexdigest()

    def get(self, key: str) -> bytes | None:
        path = self._path(key)
        try:
            data = path.read_bytes()
            os.utime(path)  # mark as recently used
            return data
        except OSError:
            return None

    def put(self, key: str, data: bytes) -> None:
        if len(data) > self.max_bytes:
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=self.root)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self._path(key))
            self._evict()
        except OSError as exc:  # a full or read-only disk costs a re-download, nothing else
            log.warning("image cache: cannot store %s: %s", key, exc)

    def _evict(self) -> None:
        entries = []
        for path in self.root.iterdir():
            try:
                st = path.stat()
            except OSError:
                continue
            entries.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries, key=lambda e: e[0]):
            if total <= self.max_bytes:
                break
            path.unlink(missing_ok=True)
            total -= size


class ImageFetcher:
    """``load(reference) -> HxWx3 uint8``; ``reference`` is a task's image value:
    ``/data/upload/...``, ``/data/local-files/?d=...`` or any path relative to Label Studio, or an
    absolute http(s) URL. Label Studio's own URLs get ``Authorization: Token <api_key>``."""

    def __init__(self, label_studio_url: str | None = None, api_key: str | None = None,
                 cache_dir: Path | None = None, cache_max_bytes: int = 1 << 30, max_pixels: int = 50_000_000,
                 max_bytes: int = 200 << 20, timeout: float = 30.0,
                 allow_url: Callable[[str], None] | None = None, memory_items: int = 8,
                 http: requests.Session | None = None):
        self.label_studio_url = label_studio_url.rstrip("/") + "/" if label_studio_url else None
        self.api_key = api_key
        self.disk = DiskCache(cache_dir, cache_max_bytes) if cache_dir else None
        self.max_pixels, self.max_bytes, self.timeout = max_pixels, max_bytes, timeout
        self.allow_url = allow_url
        self._memory: OrderedDict[str, tuple[np.ndarray, str]] = OrderedDict()  # url -> (image, digest)
        self._memory_items = memory_items
        self._lock = threading.Lock()
        self._http = http or requests.Session()

    @classmethod
    def from_settings(cls, s: settings_module.Settings | None = None, **overrides) -> "ImageFetcher":
        s = s or settings_module.get()
        kwargs = dict(label_studio_url=s.label_studio_url, api_key=s.label_studio_api_key,
                      cache_dir=s.cache_dir, cache_max_bytes=int(s.cache_max_mb * (1 << 20)),
                      max_pixels=s.max_pixels, max_bytes=int(s.max_image_mb * (1 << 20)),
                      timeout=s.fetch_timeout)
        policy = UrlPolicy.from_settings(s)
        return cls(**{**kwargs, "allow_url": policy.check, "http": policy.session(), **overrides})

    # --- references to URLs -------------------------------------------------------------
    def resolve(self, reference) -> tuple[str, dict]:
        """The absolute URL of an image reference and the headers to fetch it with."""
        if not isinstance(reference, str) or not reference.strip():
            raise RequestError(f"the task's image must be a URL string, got {type(reference).__name__}", 422)
        reference = reference.strip()
        shown = reference.split("?", 1)[0][:300]  # a query string may hold a signature
        try:
            scheme = urlsplit(reference).scheme.lower()
        except ValueError as exc:
            raise RequestError(f"image {shown!r} is not a valid URL: {exc}", 422) from exc
        if scheme in ("http", "https"):
            url = reference
        elif scheme == "" and reference.startswith("/"):
            if not self.label_studio_url:
                raise RequestError(f"image {shown!r} is relative to Label Studio, but LABEL_STUDIO_URL "
                                   "is not set on the backend", 422)
            url = urljoin(self.label_studio_url, reference.lstrip("/"))
        else:
            raise RequestError(f"image {redact(reference)!r}: only http(s) URLs and Label Studio paths are "
                               "supported", 422)
        if self.allow_url is not None:
            self.allow_url(url)
        return url, self._headers(url)

    def _headers(self, url: str) -> dict:
        """The token for Label Studio's own origin; nothing for any other host."""
        if self.api_key and self.label_studio_url and _origin(url) == _origin(self.label_studio_url):
            return {"Authorization": f"Token {self.api_key}"}
        return {}

    # --- bytes --------------------------------------------------------------------------
    def fetch_bytes(self, reference) -> tuple[bytes, bool]:
        """The file behind an image reference and whether it came from the disk cache."""
        url, headers = self.resolve(reference)
        if self.disk and (data := self.disk.get(url)) is not None:
            return data, True
        return self._download(url, headers), False

    def _download(self, url: str, headers: dict) -> bytes:
        shown = redact(url)  # presigned query strings and userinfo are credentials: keep them out of messages
        deadline = time.monotonic() + self.timeout
        try:
            for _ in range(MAX_REDIRECTS + 1):
                with self._http.get(url, headers=headers, timeout=self.timeout, stream=True,
                                    allow_redirects=False) as resp:
                    if resp.is_redirect:
                        url = urljoin(url, resp.headers["Location"])
                        if self.allow_url is not None:
                            self.allow_url(url)
                        shown, headers = redact(url), self._headers(url)
                        continue
                    return self._read_body(resp, shown, deadline)
        except requests.Timeout as exc:
            raise RequestError(f"image {shown} timed out after {self.timeout:g} s", 504) from exc
        except requests.RequestException as exc:
            raise RequestError(f"image {shown} could not be fetched: {type(exc).__name__}", 502) from exc
        raise RequestError(f"image {shown} redirected more than {MAX_REDIRECTS} times", 422)

    def _read_body(self, resp, shown: str, deadline: float) -> bytes:
        if resp.status_code >= 400:
            status = 502 if resp.status_code >= 500 else 422
            raise RequestError(f"image {shown} answered HTTP {resp.status_code}", status)
        if not 200 <= resp.status_code < 300:
            raise RequestError(f"image {shown} answered HTTP {resp.status_code}, not an image", 422)
        length = resp.headers.get("Content-Length", "")
        size = int(length) if length.isascii() and length.isdigit() else 0
        if size > self.max_bytes:
            raise RequestError(f"image {shown} is {size} bytes, over {self.max_bytes}", 422)
        chunks, total = [], 0
        while True:
            if time.monotonic() > deadline:
                raise RequestError(f"image {shown} took over {self.timeout:g} s to download", 504)
            try:  # read1: returns whatever arrived, so a host dripping bytes meets the deadline check
                chunk = resp.raw.read1(_CHUNK, decode_content=True)
            except urllib3.exceptions.ReadTimeoutError as exc:
                raise RequestError(f"image {shown} timed out after {self.timeout:g} s", 504) from exc
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise RequestError(f"image {shown} could not be fetched: {type(exc).__name__}", 502) from exc
            if not chunk:
                return b"".join(chunks)
            total += len(chunk)
            if total > self.max_bytes:
                raise RequestError(f"image {shown} is over {self.max_bytes} bytes", 422)
            chunks.append(chunk)

    # --- pixels -------------------------------------------------------------------------
    def load(self, reference) -> np.ndarray:
        """HxWx3 uint8 RGB of an image reference (recently used ones kept decoded in memory)."""
        return self.load_with_digest(reference)[0]

    def load_with_digest(self, reference) -> tuple[np.ndarray, str]:
        """``load``, with a digest of the pixels (hex): computed once per decoded image, not per
        click (hashing a 12 MP image takes tens of ms)."""
        url, _ = self.resolve(reference)
        with self._lock:
            if url in self._memory:
                self._memory.move_to_end(url)
                return self._memory[url]
        data, cached = self.fetch_bytes(reference)
        image = decode_image(data, self.max_pixels)
        if self.disk and not cached:  # only files that decode are kept
            self.disk.put(url, data)
        image.setflags(write=False)
        entry = image, hashlib.blake2b(image.data, digest_size=16).hexdigest()
        with self._lock:
            self._memory[url] = entry
            while len(self._memory) > self._memory_items:
                self._memory.popitem(last=False)
        return entry
