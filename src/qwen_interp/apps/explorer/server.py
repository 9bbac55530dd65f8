"""The Explorer's HTTP server: the standard library's threading server, loopback by default.

Routes (docs/explorer.md):

- pages: ``/`` ``/feature`` ``/lab`` ``/topology`` and their files under ``/static/``; vendored
  libraries under ``/vendor/``; circuit-tracer's graph viewer under ``/graph/`` with its data at
  ``/graph/data/graph-metadata.json`` and ``/graph/graph_data/<slug>.json``;
- ``/features/<file>``: the CLT sidecar, with single HTTP ranges (the viewer reads one record
  per request: ``Range: bytes=start-end``);
- JSON: ``GET /api/info``, ``/api/feature``, ``/api/search``, ``/api/topology`` (the maps of
  ``--topology``), ``/api/topology/map?name=``; ``POST /api/analyze``,
  ``/api/compare``, ``/api/steer``. Errors are ``{"error": "<one line>"}`` with a 4xx/5xx code.

No handler reads a whole sidecar: files are streamed in chunks, records read by range.
"""

from __future__ import annotations

import json
import mimetypes
import re
import socket
import sys
import threading
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from qwen_interp.errors import InputError

from . import viewer
from .app import Explorer
from .store import NotFound

PAGES = {"/": "index.html", "/feature": "feature.html", "/lab": "lab.html",
         "/topology": "topology.html"}
OWN_STATIC = viewer.STATIC / "explorer"
VENDOR = viewer.STATIC / "vendor"
MAX_BODY = 1 << 20
CHUNK = 1 << 16
_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")
_GRAPH_DATA = re.compile(r"/graph/graph_data/([^/]+)\.json$")


class HTTPError(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


class Handler(BaseHTTPRequestHandler):
    server: ExplorerServer
    protocol_version = "HTTP/1.1"

    # --- dispatch ------------------------------------------------------------------------------
    def do_GET(self) -> None:
        self._answer(self._get)

    def do_HEAD(self) -> None:
        self._answer(self._get, head=True)

    def do_POST(self) -> None:
        self._answer(self._post)

    def _answer(self, route, head: bool = False) -> None:
        self.head_only = head
        url = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            route(url.path, query)
        except HTTPError as exc:
            self._json({"error": str(exc)}, exc.status)
        except NotFound as exc:
            self._json({"error": str(exc.args[0] if exc.args else exc)}, HTTPStatus.NOT_FOUND)
        except (InputError, ValueError, KeyError) as exc:
            self._json({"error": str(exc.args[0] if exc.args else exc)}, HTTPStatus.BAD_REQUEST)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the browser went away mid-answer
        except Exception as exc:  # one line to the client and to the log, the server lives on
            line = f"{type(exc).__name__}: {exc}".splitlines()[0]
            print(f"explorer: {self.command} {self.path}: {line}", file=sys.stderr)
            self._json({"error": line}, HTTPStatus.INTERNAL_SERVER_ERROR)

    def _get(self, path: str, query: dict) -> None:
        app = self.server.app
        if path in PAGES:
            return self._file(OWN_STATIC / PAGES[path])
        if path.startswith("/static/"):
            return self._file(_inside(OWN_STATIC, path.removeprefix("/static/")))
        if path.startswith("/vendor/"):
            return self._file(_inside(VENDOR, path.removeprefix("/vendor/")))
        if path == "/graph":
            return self._redirect("/graph/")
        if path == "/graph/data/graph-metadata.json":
            return self._json(app.graph_metadata())
        graph = _GRAPH_DATA.match(path)
        if graph:
            return self._json(app.graph(graph.group(1)))
        if path.startswith("/graph/"):
            found = viewer.asset(path.removeprefix("/graph/"))
            if found is None:
                raise NotFound(f"no {path}")
            return self._bytes(*found)
        if path.startswith("/features/"):
            folder = app.store.clt_folder()
            if folder is None:
                raise NotFound("no CLT feature records loaded (qwen-interp explore --features)")
            return self._file(_inside(folder, path.removeprefix("/features/")), ranged=True)
        if path == "/api/info":
            return self._json(app.info())
        if path == "/api/graphs":
            return self._json(app.graph_metadata())
        if path == "/api/feature":
            return self._json(app.feature(_word(query, "dict", "clt"), _int(query, "layer"),
                                          _int(query, "feature")))
        if path == "/api/search":
            return self._json(app.search(query.get("q", "")))
        if path == "/api/topology":
            return self._json(app.topology_maps())
        if path == "/api/topology/map":
            return self._json(app.topology_map(query.get("name", "")))
        raise NotFound(f"no {path}")

    def _post(self, path: str, query: dict) -> None:
        app = self.server.app
        if path.startswith("/save_graph/"):
            raise HTTPError(HTTPStatus.NOT_IMPLEMENTED,
                            "saving subgraphs is not supported by the Explorer")
        if path not in ("/api/analyze", "/api/compare", "/api/steer"):
            raise NotFound(f"no POST {path}")
        body = self._body()
        live = app.live
        if live is None:
            raise HTTPError(HTTPStatus.SERVICE_UNAVAILABLE,
                            "no live model: start `qwen-interp explore` with a model "
                            "(it runs without one only with --no-model)")
        k = _bounded(body.get("k", 10), "k", 1, 200)
        if path == "/api/analyze":
            return self._json(live.analyze(_text(body, "text"), k))
        if path == "/api/compare":
            return self._json(live.compare(_text(body, "a"), _text(body, "b"), k))
        from .live import MAX_NEW_TOKENS, Edit
        edits = [_edit(e, Edit) for e in _list(body, "edits")]
        n = _bounded(body.get("max_new_tokens", 16), "max_new_tokens", 1, MAX_NEW_TOKENS)
        return self._json(live.steer(_text(body, "prompt"), edits, n))

    # --- responses -----------------------------------------------------------------------------
    def _json(self, data, status: HTTPStatus = HTTPStatus.OK) -> None:
        body = json.dumps(data, ensure_ascii=False, allow_nan=False).encode()
        self._bytes(body, "x.json", status, extra={"Cache-Control": "no-store"})

    def _bytes(self, body: bytes, name: str, status: HTTPStatus = HTTPStatus.OK,
               extra: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", _content_type(name))
        self.send_header("Content-Length", str(len(body)))
        for key, value in (extra or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if not self.head_only:
            self.wfile.write(body)

    def _redirect(self, to: str) -> None:
        self.send_response(HTTPStatus.MOVED_PERMANENTLY)
        self.send_header("Location", to)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _file(self, path: Path | None, ranged: bool = False) -> None:
        if path is None or not path.is_file():
            raise NotFound(f"no {self.path}")
        size = path.stat().st_size
        start, end = 0, size - 1
        status = HTTPStatus.OK
        header = self.headers.get("Range") if ranged else None
        if header:
            start, end = _byte_range(header, size)
            status = HTTPStatus.PARTIAL_CONTENT
        self.send_response(status)
        self.send_header("Content-Type", _content_type(path.name))
        self.send_header("Content-Length", str(end - start + 1))
        if ranged:
            self.send_header("Accept-Ranges", "bytes")
        if status == HTTPStatus.PARTIAL_CONTENT:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if self.head_only:
            return
        with open(path, "rb") as fh:
            fh.seek(start)
            left = end - start + 1
            while left > 0:
                chunk = fh.read(min(CHUNK, left))
                if not chunk:
                    break
                self.wfile.write(chunk)
                left -= len(chunk)

    def _body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            raise HTTPError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            f"request body of {length} bytes; the limit is {MAX_BODY}")
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError as exc:
            raise InputError(f"request body is not JSON: {exc}") from None
        if not isinstance(body, dict):
            raise InputError("request body must be a JSON object")
        return body

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's name
        if self.server.verbose:
            super().log_message(format, *args)


class ExplorerServer(ThreadingHTTPServer):
    """``server_close()`` returns only once every request thread has ended. Request threads are not
    daemons: a daemon thread still freeing tensors while the interpreter shuts down dies inside
    torch's C++ and the process aborts ("terminate called without an active exception") instead
    of exiting 0. Connections idling between keep-alive requests are woken first, so closing
    waits only for requests in flight."""

    daemon_threads = False  # the stdlib's ThreadingHTTPServer says True; see above

    def __init__(self, app: Explorer, address: tuple[str, int], verbose: bool = False) -> None:
        super().__init__(address, Handler)
        self.app = app
        self.verbose = verbose
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request, client_address) -> None:
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def server_close(self) -> None:
        with self._open_lock:
            idle_or_busy = list(self._open)
        for connection in idle_or_busy:
            try:  # a handler waiting for the next request reads end-of-file; answers still go out
                connection.shutdown(socket.SHUT_RD)
            except OSError:
                pass  # already closed by the client
        super().server_close()  # joins the request threads


@dataclass
class RunningServer:
    server: ExplorerServer
    thread: threading.Thread

    @property
    def url(self) -> str:
        host, port = self.server.socket.getsockname()[:2]
        return f"http://{host}:{port}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


def make_server(app: Explorer, host: str = "127.0.0.1", port: int = 0,
                verbose: bool = False) -> ExplorerServer:
    return ExplorerServer(app, (host, port), verbose=verbose)


def start_server(app: Explorer, host: str = "127.0.0.1", port: int = 0,
                 verbose: bool = False) -> RunningServer:
    """Serve ``app`` from a daemon thread (tests, notebooks); ``.url``, ``.stop()``."""
    server = make_server(app, host, port, verbose)
    thread = threading.Thread(target=server.serve_forever, name="qwen-interp-explorer",
                              daemon=True)
    thread.start()
    return RunningServer(server, thread)


# --- request parsing ------------------------------------------------------------------------------
def _inside(root: Path, relative: str) -> Path | None:
    """``root / relative`` if it stays inside ``root`` (no ``..`` escapes), else None."""
    root = root.resolve()
    path = (root / relative).resolve()
    return path if root in path.parents else None


def _content_type(name: str) -> str:
    if name.endswith(".json"):
        return "application/json; charset=utf-8"
    if name.endswith((".bin", ".gz")):
        return "application/octet-stream"  # never Content-Encoding: the viewer inflates itself
    guessed = mimetypes.guess_type(name)[0] or "application/octet-stream"
    return guessed + ("; charset=utf-8" if guessed.startswith("text/") or
                      guessed.endswith("javascript") else "")


def _byte_range(header: str, size: int) -> tuple[int, int]:
    """(first, last) byte of a single ``bytes=a-b`` range, clipped to the file (RFC 9110)."""
    match = _RANGE.match(header.strip())
    if not match or match.groups() == ("", ""):
        raise HTTPError(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                        f"unsupported Range {header!r}: expected one bytes=start-end")
    first, last = match.groups()
    if first == "":  # the last N bytes
        start, end = max(size - int(last), 0), size - 1
    else:
        start, end = int(first), min(int(last), size - 1) if last else size - 1
    if start >= size or start > end:
        raise HTTPError(HTTPStatus.REQUESTED_RANGE_NOT_SATISFIABLE,
                        f"Range {header!r} is outside the file's {size} bytes")
    return start, end


def _int(query: dict, name: str) -> int:
    value = query.get(name)
    if value is None or not value.isdigit():
        raise InputError(f"query parameter {name} must be a natural number, got {value!r}")
    return int(value)


def _word(query: dict, name: str, default: str) -> str:
    value = query.get(name, default)
    if value not in ("clt", "sae"):
        raise InputError(f"query parameter {name} must be clt or sae, got {value!r}")
    return value


def _text(body: dict, name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise InputError(f"{name} must be a non-empty string")
    return value


def _list(body: dict, name: str) -> list:
    value = body.get(name)
    if not isinstance(value, list):
        raise InputError(f"{name} must be a list")
    return value


def _bounded(value, name: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(f"{name} must be an integer in {low}..{high}, got {value!r}")
    return value


def _edit(item, edit_type):
    if not isinstance(item, dict):
        raise InputError(f"an edit must be {{dict, layer, feature, value}}, got {item!r}")
    kind = item.get("dict", "clt")
    if kind not in ("clt", "sae"):
        raise InputError(f"edit dict must be clt or sae, got {kind!r}")
    layer, feature, value = item.get("layer"), item.get("feature"), item.get("value")
    for name, v in (("layer", layer), ("feature", feature)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InputError(f"edit {name} must be a natural number, got {v!r}")
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InputError(f"edit value must be a number, got {value!r}")
    return edit_type(kind, layer, feature, float(value))
