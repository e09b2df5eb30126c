"""The server machinery shared by the fake CRM APIs, served on 127.0.0.1.

A fake counts every request by a page key (method, path and the paging
cursor), counts the successful ones apart, injects faults that tests queue
with ``fail(...)``, and issues OAuth access tokens that ``expire_after(n)``
invalidates after n more API calls. ``arrivals`` records when each API
request arrived, on the fake's ``time.monotonic()``. Amounts are ``Decimal``
in the fake's data and are written as JSON numbers, as the CRMs send them.
"""

import json
import re
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

_DECIMAL_MARK = "\u0000D"
_DECIMAL_PATTERN = re.compile(r'"\\u0000D(-?[0-9]+(?:\.[0-9]+)?)"')


def dump_json(value) -> bytes:
    """Encode ``value``, writing each Decimal as a JSON number with its digits."""

    def mark(item):
        if isinstance(item, Decimal):
            return _DECIMAL_MARK + str(item)
        if isinstance(item, dict):
            return {key: mark(inner) for key, inner in item.items()}
        if isinstance(item, list | tuple):
            return [mark(inner) for inner in item]
        return item

    return _DECIMAL_PATTERN.sub(r"\1", json.dumps(mark(value))).encode()


@dataclass
class Fault:
    """A response served instead of the real one to matching requests."""

    method: str
    path_prefix: str
    status: int
    body: object
    headers: dict = field(default_factory=dict)
    times: int = 1
    after: str | None = None  # match only this paging cursor (None: any)

    def matches(self, method, path, cursor) -> bool:
        if (
            self.times <= 0
            or method != self.method
            or not path.startswith(self.path_prefix)
        ):
            return False
        return self.after is None or self.after == (cursor or "")


@dataclass
class Request:
    method: str
    path: str
    query: dict
    headers: dict
    body: object
    form: dict


class FakeCrmApi:
    """Subclasses implement ``route(request)`` and the CRM's error bodies."""

    token_path = "/oauth/token"

    def __init__(self):
        self.lock = threading.Lock()
        self.count = Counter()  # every request, by page key
        self.served = Counter()  # successful requests, by page key
        # (time.monotonic(), method, path) of every API request, in arrival order
        self.arrivals: list[tuple[float, str, str]] = []
        self.faults: list[Fault] = []
        self.api_token = "fake-private-token-" + secrets.token_hex(4)
        self.client_id = "fake-client-id"
        self.client_secret = "fake-client-secret-" + secrets.token_hex(4)
        self.refresh_token = "fake-refresh-" + secrets.token_hex(4)
        self.access_tokens: set[str] = set()
        self.token_requests = 0
        self.token_lifetime = 1800
        self._expire_in: int | None = None
        self.server = None

    # Switches for tests

    def fail(
        self,
        method,
        path_prefix,
        status,
        body=None,
        *,
        times=1,
        after=None,
        headers=None,
    ):
        with self.lock:
            self.faults.append(
                Fault(
                    method, path_prefix, status, body, dict(headers or {}), times, after
                )
            )

    def expire_after(self, calls: int) -> None:
        """Invalidate every issued access token after ``calls`` more API calls."""
        with self.lock:
            self._expire_in = calls

    def issue_token(self) -> str:
        token = "fake-access-" + secrets.token_hex(8)
        with self.lock:
            self.access_tokens.add(token)
        return token

    # Server

    def __enter__(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                fake._handle(self, "GET")

            def do_POST(self):
                fake._handle(self, "POST")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()

    def _handle(self, handler, method):
        request = self._read(handler, method)
        status, body, headers = self._respond(request)
        payload = dump_json(body) if body is not None else b""
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json;charset=utf-8")
        handler.send_header("Content-Length", str(len(payload)))
        for name, value in headers.items():
            handler.send_header(name, str(value))
        handler.end_headers()
        handler.wfile.write(payload)

    def _read(self, handler, method) -> Request:
        parts = urlsplit(handler.path)
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        content_type = handler.headers.get("Content-Type", "")
        body, form = None, {}
        if "application/x-www-form-urlencoded" in content_type:
            form = {key: values[0] for key, values in parse_qs(raw.decode()).items()}
        elif raw:
            body = json.loads(raw)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        return Request(method, parts.path, query, dict(handler.headers), body, form)

    def _respond(self, request: Request):
        if request.path == self.token_path:
            return self.token(request)
        key = self.page_key(request)
        with self.lock:
            self.count[key] += 1
            self.arrivals.append((time.monotonic(), request.method, request.path))
        if not self.authorized(request):
            return self.auth_error()
        fault = self._take_fault(request)
        if fault is not None:
            return fault.status, fault.body, fault.headers
        self._count_down_expiry()
        status, body, headers = self.route(request)
        if status < 400:
            with self.lock:
                self.served[key] += 1
        return status, body, headers

    def _take_fault(self, request) -> Fault | None:
        cursor = self.cursor(request)
        with self.lock:
            for fault in self.faults:
                if fault.matches(request.method, request.path, cursor):
                    fault.times -= 1
                    return fault
        return None

    def _count_down_expiry(self) -> None:
        with self.lock:
            if self._expire_in is None:
                return
            self._expire_in -= 1
            if self._expire_in <= 0:
                self.access_tokens.clear()
                self._expire_in = None

    def authorized(self, request) -> bool:
        value = request.headers.get("Authorization", "")
        token = value.removeprefix("Bearer ").strip()
        with self.lock:
            return token == self.api_token or token in self.access_tokens

    def token(self, request):
        """The refresh-token grant; form fields as the CRM takes them."""
        with self.lock:
            self.token_requests += 1
        form = request.form
        if (
            form.get("grant_type") != "refresh_token"
            or form.get("refresh_token") != self.refresh_token
            or not self.client_authorized(request)
        ):
            return (
                400,
                {
                    "error": "invalid_grant",
                    "error_description": "unknown refresh token",
                },
                {},
            )
        return 200, self.token_body(self.issue_token()), {}

    def client_authorized(self, request) -> bool:
        form = request.form
        return (
            form.get("client_id") == self.client_id
            and form.get("client_secret") == self.client_secret
        )

    def token_body(self, token: str) -> dict:
        return {
            "access_token": token,
            "refresh_token": self.refresh_token,
            "expires_in": self.token_lifetime,
            "token_type": "bearer",
        }

    def page_key(self, request) -> tuple:
        return (request.method, request.path, self.cursor(request))

    def cursor(self, request) -> str:
        return ""

    def auth_error(self):
        return 401, {"error": "unauthorized"}, {}

    def route(self, request):
        raise NotImplementedError

    def credentials(self, oauth: bool = False) -> dict:
        if oauth:
            return {
                "client_id": self.client_id,
                "client_secret": self.client_secret,
                "refresh_token": self.refresh_token,
            }
        return {"token": self.api_token}
