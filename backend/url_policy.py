"""Which image URLs the backend may fetch (server-side request forgery defence).

Task data comes from annotators and imports, so an image URL is untrusted: unchecked, it could
make the backend (which holds the Label Studio API token) read cloud metadata at 169.254.169.254,
a database on the private network, or any Label Studio API route. ``UrlPolicy.check(url)``
refuses, with a 403 ``RequestError`` and before any connection is made:

- schemes other than http and https;
- Label Studio's own origin (LABEL_STUDIO_URL) outside its data paths (/data/upload/,
  /data/local-files/?d=<relative path>, /storage-data/uploaded/, /tasks|projects/<id>/resolve|presign/):
  only those get the token, and no ``..`` segment may climb out of them;
- any other host not in FOCUSCUT_ALLOWED_HOSTS (comma-separated: ``host``, ``host:port``,
  ``*.domain`` for its subdomains, ``*`` for every host, or IP networks such as ``10.0.0.0/8``);
- an allowed host any of whose resolved addresses is not public (loopback, private, link-local,
  multicast, reserved...), unless that address lies in a listed network.

The image fetcher calls it again for every redirect hop. ``session()`` gives a requests session
whose every TCP connection is checked once more with ``peer`` (the address the socket reached)
before a byte is sent, so a DNS answer that changes between check and connect (rebinding) gets
nowhere. That session ignores HTTP(S)_PROXY variables. Label Studio itself is trusted at any address.
"""
from __future__ import annotations

import ipaddress
import posixpath
import socket
from urllib.parse import parse_qs, unquote, urlsplit

import requests
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from .errors import RequestError

_DATA_PATHS = ("data/upload/", "data/local-files/", "storage-data/uploaded/")
_ID_PATHS = ({"tasks", "projects"}, {"resolve", "presign"})  # <kind>/<int id>/<action>/


def redact(url: str) -> str:
    """``url`` without credentials and query string (presigned signatures, tokens): safe to show."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        if ":" in host:
            host = f"[{host}]"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparsable URL>"
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _origin(parts) -> tuple[str, str, int | None]:
    return parts.scheme, (parts.hostname or "").lower(), parts.port or {"http": 80, "https": 443}.get(parts.scheme)


def _has_dot_segment(path: str) -> bool:
    return any(seg in ("..", ".") for seg in unquote(path).replace("\\", "/").split("/"))


def _address(text: str):
    address = ipaddress.ip_address(text.split("%", 1)[0])
    return address.ipv4_mapped or address if address.version == 6 else address


class UrlPolicy:
    """``check(url)``: None if the backend may fetch ``url``, else RequestError 403 (422 if malformed).

    ``label_studio_url``: trusted base; ``allowed``: FOCUSCUT_ALLOWED_HOSTS entries;
    ``resolve(host, port) -> [address text]`` (DNS by default, replaceable in tests).
    """

    def __init__(self, label_studio_url: str | None, allowed=(), resolve=None):
        self.ls = urlsplit(label_studio_url.rstrip("/") + "/") if label_studio_url else None
        self.names, self.networks = [], []
        for entry in allowed:
            entry = entry.strip().lower()
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry.strip("[]"), strict=False))
            except ValueError:
                self.names.append(entry)
        self.resolve = resolve or _resolve

    @classmethod
    def from_settings(cls, s) -> "UrlPolicy":
        return cls(s.label_studio_url, s.allowed_hosts)

    def is_label_studio(self, url: str) -> bool:
        """Whether ``url`` is on Label Studio's origin (and so gets the API token)."""
        return self.ls is not None and _origin(urlsplit(url)) == _origin(self.ls)

    def check(self, url: str) -> None:
        shown = redact(url)
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise RequestError(f"image URL {shown} is malformed: {exc}", 422) from exc
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise RequestError(f"image URL {shown}: only http(s) URLs with a host can be fetched", 422)
        if self.is_label_studio(url):
            self._check_label_studio_path(parts, shown)
            return
        host = parts.hostname.lower()
        if not self._host_allowed(host, port):
            raise RequestError(f"image host {host} is not allowed: the backend fetches images from Label Studio "
                               f"and the hosts in FOCUSCUT_ALLOWED_HOSTS only", 403)
        self._check_addresses(host, self._addresses(host, port or _origin(parts)[2]))

    def check_peer(self, scheme: str, host: str, port: int, peer: str) -> None:
        """RequestError 403 if a connection to ``host`` reached a refused address ``peer``."""
        if not self.is_label_studio(f"{scheme}://{host}:{port}/"):
            self._check_addresses(host, [peer])

    def _check_addresses(self, host: str, addresses) -> None:
        for text in addresses:
            address = _address(text)
            if not address.is_global and not any(address in net for net in self.networks):
                raise RequestError(f"image host {host} resolves to {address}, a non-public address "
                                   f"(list its network in FOCUSCUT_ALLOWED_HOSTS to allow it)", 403)

    def _check_label_studio_path(self, parts, shown: str) -> None:
        base = self.ls.path
        path = parts.path
        if _has_dot_segment(path) or not path.startswith(base):
            raise RequestError(f"image URL {shown} leaves Label Studio's data paths", 403)
        rel = path[len(base):]
        segments = rel.split("/")
        by_id = (len(segments) >= 3 and segments[0] in _ID_PATHS[0] and segments[1].isascii()
                 and segments[1].isdigit() and segments[2] in _ID_PATHS[1])
        if not (rel.startswith(_DATA_PATHS) or by_id):
            raise RequestError(f"image URL {shown} is not a Label Studio data path (/data/upload/, "
                               f"/data/local-files/, /storage-data/uploaded/, /tasks/<id>/resolve/)", 403)
        if rel.startswith("data/local-files/"):
            for d in parse_qs(parts.query).get("d", []):
                if d.startswith(("/", "\\")) or _has_dot_segment(d) or posixpath.isabs(unquote(d)):
                    raise RequestError(f"local file {d!r} must be a path inside Label Studio's "
                                       f"LOCAL_FILES_DOCUMENT_ROOT (relative, no '..')", 403)

    def _host_allowed(self, host: str, port: int | None) -> bool:
        for name in self.names:
            if name == "*":
                return True
            entry_host, _, entry_port = name.rpartition(":") if name.count(":") == 1 else (name, "", "")
            if entry_port and (not (entry_port.isascii() and entry_port.isdigit()) or int(entry_port) != port):
                continue
            if entry_host == host or (entry_host.startswith("*.") and host.endswith(entry_host[1:])):
                return True
        try:
            address = _address(host.strip("[]"))
        except ValueError:
            return False
        return any(address in net for net in self.networks)

    def session(self) -> requests.Session:
        """A requests session that checks each new connection's peer address (see above)."""
        policy = self

        def checked(pool_cls, scheme: str):
            def _new_conn(conn):
                sock = pool_cls.ConnectionCls._new_conn(conn)
                try:
                    policy.check_peer(scheme, conn.host, conn.port, sock.getpeername()[0])
                except BaseException:
                    sock.close()
                    raise
                return sock

            conn_cls = type("Checked" + pool_cls.ConnectionCls.__name__, (pool_cls.ConnectionCls,),
                            {"_new_conn": _new_conn})
            return type("Checked" + pool_cls.__name__, (pool_cls,), {"ConnectionCls": conn_cls})

        adapter = requests.adapters.HTTPAdapter()
        adapter.poolmanager.pool_classes_by_scheme = {"http": checked(HTTPConnectionPool, "http"),
                                                      "https": checked(HTTPSConnectionPool, "https")}
        http = requests.Session()
        http.trust_env = False
        http.mount("http://", adapter)
        http.mount("https://", adapter)
        return http

    def _addresses(self, host: str, port: int | None) -> list[str]:
        try:
            addresses = self.resolve(host, port)
        except OSError as exc:
            raise RequestError(f"image host {host} does not resolve ({exc.strerror or exc})", 422) from exc
        if not addresses:
            raise RequestError(f"image host {host} does not resolve", 422)
        return addresses


def _resolve(host: str, port: int | None) -> list[str]:
    return sorted({info[4][0] for info in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)})
