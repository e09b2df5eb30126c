"""A strict fake ERP JSON API that tests serve on 127.0.0.1 from a thread.

Endpoints (every one except the token endpoint requires an Authorization
header with a bearer token or the basic credentials):

- ``POST /api/orders`` creates a sales order and requires an
  ``Idempotency-Key`` header. It returns 409 when the key was used before, and
  422 with ``{"errors": {"field": ["message"]}}`` when the body is invalid.
  It returns 404 with ``{"error": "customer_not_found"}`` when
  ``known_customers`` is set and lacks the customer. Otherwise it returns 201
  with the stored order: ``id``, ``number`` such as ``SO-000001``, ``state``,
  ``idempotency_key`` and the body fields. Each order gets a posted invoice
  with the same id.
- ``POST /api/orders/validate`` checks a body like ``POST /api/orders`` but
  stores nothing and returns ``{"valid": true, "lines_total", "total"}``.
- ``GET /api/orders?idempotency_key=K`` returns ``{"results": [...]}``.
- ``GET /api/orders/<id>``, ``POST /api/orders/<id>/cancel`` (idempotent).
- ``GET /api/invoices/<order id>``.
- ``POST /oauth/token`` issues client-credentials tokens that expire after
  ``token_lifetime`` seconds.

Switches for tests: ``fail_next`` (respond to N requests with a status, 503
by default), ``rate_limit_next`` (429 with Retry-After), ``delay_next``
(process the request, then wait before responding) and ``drop_next`` (process
the request, then close the connection without a response). ``hold_next``
processes the request, then waits for the test to release the response.
``expire_tokens`` and the per-path request counter ``count`` complete them.

Usage::

    with FakeErp() as erp:
        os.environ.update(erp.environment())
        destination = Destination(
            slug="erp", adapter="rest", settings=erp.destination_settings()
        )
"""

import base64
import binascii
import json
import re
import secrets
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

DEFAULT_SKUS = frozenset({"FAKE-SKU-100", "FAKE-SKU-200", "FAKE-SKU-300"})
DEFAULT_CURRENCIES = frozenset({"EUR", "USD", "SEK", "JPY", "KWD"})
# ISO 4217 minor units of the default currencies that do not use 2 digits.
MINOR_UNITS = {"JPY": 0, "KWD": 3}
ORDER_FIELDS = frozenset(
    {"crm_reference", "customer", "currency", "close_date", "lines", "total"}
)
LINE_FIELDS = frozenset({"sku", "quantity", "unit_price", "line_total"})
OPTIONAL_LINE_FIELDS = frozenset({"discount_percent", "description"})
CUSTOMER_FIELDS = frozenset({"reference", "name"})
DECIMAL_PATTERN = re.compile(r"^-?\d+(\.\d+)?$")

TOKEN_ENV = "FAKE_ERP_TOKEN"
PASSWORD_ENV = "FAKE_ERP_PASSWORD"
CLIENT_SECRET_ENV = "FAKE_ERP_CLIENT_SECRET"


@dataclass
class Reply:
    status: int
    body: dict | None = None
    headers: dict = field(default_factory=dict)


@dataclass
class Fault:
    kind: str  # "status" before processing, "delay", "hold" or "drop" after it
    remaining: int
    path: str | None = None
    status: int = 503
    headers: dict = field(default_factory=dict)
    seconds: float = 0.0
    body: dict | None = None
    release: threading.Event = field(default_factory=threading.Event)
    method: str | None = None

    def matches(self, path: str, method: str) -> bool:
        return (
            self.remaining > 0
            and self.path in (None, path)
            and self.method in (None, method)
        )


class FakeErp:
    def __init__(
        self,
        *,
        bearer_token: str = "fake-erp-bearer-token-1f7c",
        basic_user: str = "meshline",
        basic_password: str = "fake-erp-password-93ab",
        client_id: str = "meshline-client",
        client_secret: str = "fake-erp-client-secret-5d2e",
        token_lifetime: float = 300.0,
        currencies=DEFAULT_CURRENCIES,
        skus=DEFAULT_SKUS,
        known_customers=None,
        check_line_totals: bool = True,
    ):
        self.bearer_token = bearer_token
        self.basic_user = basic_user
        self.basic_password = basic_password
        self.client_id = client_id
        self.client_secret = client_secret
        self.token_lifetime = token_lifetime
        self.currencies = set(currencies)
        self.skus = set(skus)
        self.known_customers = None if known_customers is None else set(known_customers)
        self.check_line_totals = check_line_totals
        self.orders: dict[int, dict] = {}
        self.invoices: dict[int, dict] = {}
        self.issued_tokens: dict[str, float] = {}  # token -> monotonic expiry
        self.requests: Counter = Counter()  # (method, path) -> count
        self._faults: list[Fault] = []
        self._lock = threading.RLock()
        self._stopping = threading.Event()
        self._server = None
        self._thread = None

    # Lifecycle

    def start(self) -> "FakeErp":
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # so that stop() returns quickly
            name="fake-erp",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join()
            self._server = None

    def __enter__(self) -> "FakeErp":
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # Switches

    def fail_next(
        self, n=1, status=503, *, path=None, retry_after=None, body=None
    ) -> None:
        """Respond to the next N requests with ``status`` and ``body`` instead."""
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        fault = Fault("status", n, path, status=status, headers=headers, body=body)
        self._add_fault(fault)

    def rate_limit_next(self, retry_after="5", n=1, *, path=None) -> None:
        self.fail_next(n, 429, path=path, retry_after=retry_after)

    def delay_next(self, seconds: float, n=1, *, path=None) -> None:
        """Process the next N requests, then wait ``seconds`` before responding."""
        self._add_fault(Fault("delay", n, path, seconds=seconds))

    def hold_next(self, n=1, *, path=None, method=None) -> threading.Event:
        """Process the next N requests, then respond only once the returned
        event is set (or the server stops)."""
        fault = Fault("hold", n, path, method=method)
        self._add_fault(fault)
        return fault.release

    def drop_next(self, n=1, *, path=None) -> None:
        """Process the next N requests, then close the connection without a response."""
        self._add_fault(Fault("drop", n, path))

    def expire_tokens(self) -> None:
        with self._lock:
            for token in self.issued_tokens:
                self.issued_tokens[token] = 0.0

    def count(self, path: str, method: str | None = None) -> int:
        with self._lock:
            return sum(
                number
                for (seen_method, seen_path), number in self.requests.items()
                if seen_path == path and method in (None, seen_method)
            )

    def set_invoice(self, order_id: int, **fields) -> None:
        with self._lock:
            self.invoices[order_id].update(fields)

    # Settings for the REST adapter

    def environment(self) -> dict:
        """Return the environment variables that ``destination_settings`` names."""
        return {
            TOKEN_ENV: self.bearer_token,
            PASSWORD_ENV: self.basic_password,
            CLIENT_SECRET_ENV: self.client_secret,
        }

    def destination_settings(self, auth="bearer", **overrides) -> dict:
        """Return adapter settings for this server.

        ``auth`` is "bearer", "basic", "oauth2" or a whole ``auth`` setting.
        """
        auth_settings = (
            auth
            if isinstance(auth, dict)
            else {
                "bearer": {"type": "bearer", "token_env": TOKEN_ENV},
                "basic": {
                    "type": "basic",
                    "username": self.basic_user,
                    "password_env": PASSWORD_ENV,
                },
                "oauth2": {
                    "type": "oauth2_client_credentials",
                    "token_url": f"{self.base_url}/oauth/token",
                    "client_id": self.client_id,
                    "client_secret_env": CLIENT_SECRET_ENV,
                    "scope": "orders",
                },
            }[auth]
        )
        settings = {
            "base_url": self.base_url,
            "timeout": 5,
            "idempotency_header": "Idempotency-Key",
            "auth": auth_settings,
            "commands": _adapter_commands(),
        }
        settings.update(overrides)
        return settings

    # Request handling, called from the server's threads

    def _add_fault(self, fault: Fault) -> None:
        with self._lock:
            self._faults.append(fault)

    def _take_fault(self, kinds: tuple, path: str, method: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind in kinds and fault.matches(path, method):
                    fault.remaining -= 1
                    return fault
        return None

    def _handle(self, method: str, target: str, headers, raw_body: bytes):
        url = urlsplit(target)
        with self._lock:
            self.requests[(method, url.path)] += 1
        fault = self._take_fault(("status",), url.path, method)
        if fault is not None:
            body = fault.body or {
                "error": "injected",
                "message": f"Injected {fault.status}.",
            }
            return Reply(fault.status, body, dict(fault.headers)), None
        with self._lock:
            reply = self._route(
                method, url.path, parse_qs(url.query), headers, raw_body
            )
        return reply, self._take_fault(("delay", "hold", "drop"), url.path, method)

    def _route(self, method, path, query, headers, raw_body) -> Reply:
        if path == "/oauth/token":
            return self._issue_token(method, headers, raw_body)
        denied = self._check_auth(headers)
        if denied is not None:
            return denied
        parts = path.strip("/").split("/")
        if parts[:2] == ["api", "orders"]:
            return self._route_orders(method, parts[2:], query, headers, raw_body)
        if parts[:2] == ["api", "invoices"] and len(parts) == 3 and method == "GET":
            invoice = self.invoices.get(_int_or_none(parts[2]))
            return Reply(200, dict(invoice)) if invoice else _not_found("invoice")
        return _not_found("path")

    def _route_orders(self, method, rest, query, headers, raw_body) -> Reply:
        if rest == [] and method == "POST":
            return self._create_order(headers, raw_body)
        if rest == [] and method == "GET":
            return self._list_orders(query)
        if rest == ["validate"] and method == "POST":
            return self._validate_order(headers, raw_body)
        order = self.orders.get(_int_or_none(rest[0])) if rest else None
        if len(rest) == 1 and method == "GET":
            return Reply(200, dict(order)) if order else _not_found("order")
        if rest[1:] == ["cancel"] and method == "POST":
            return self._cancel_order(order) if order else _not_found("order")
        return Reply(405, {"error": "method_not_allowed"})

    def _check_auth(self, headers) -> Reply | None:
        scheme, _, credentials = (headers.get("Authorization") or "").partition(" ")
        if scheme == "Bearer" and credentials == self.bearer_token:
            return None
        if scheme == "Bearer" and credentials in self.issued_tokens:
            if self.issued_tokens[credentials] > time.monotonic():
                return None
            return _unauthorized("invalid_token", "The access token expired.")
        if scheme == "Basic" and self._basic_matches(credentials):
            return None
        return _unauthorized("unauthorized", "The credentials are missing or invalid.")

    def _basic_matches(self, credentials: str) -> bool:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return False
        return decoded == f"{self.basic_user}:{self.basic_password}"

    def _issue_token(self, method, headers, raw_body) -> Reply:
        if method != "POST":
            return Reply(405, {"error": "method_not_allowed"})
        form = {k: v[0] for k, v in parse_qs(raw_body.decode("latin-1")).items()}
        client_id, client_secret = form.get("client_id"), form.get("client_secret")
        scheme, _, credentials = (headers.get("Authorization") or "").partition(" ")
        if scheme == "Basic":
            try:
                decoded = base64.b64decode(credentials, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                decoded = ""
            client_id, _, client_secret = decoded.partition(":")
        if form.get("grant_type") != "client_credentials":
            return Reply(400, {"error": "unsupported_grant_type"})
        if (client_id, client_secret) != (self.client_id, self.client_secret):
            return Reply(401, {"error": "invalid_client"})
        token = secrets.token_urlsafe(24)
        self.issued_tokens[token] = time.monotonic() + self.token_lifetime
        body = {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.token_lifetime,
            "scope": form.get("scope", ""),
        }
        return Reply(200, body)

    def _create_order(self, headers, raw_body) -> Reply:
        key = headers.get("Idempotency-Key")
        if not key:
            return _invalid({"Idempotency-Key": ["This header is required."]})
        for order in self.orders.values():
            if order["idempotency_key"] == key:
                message = (
                    f"The idempotency key {key!r} was used by order {order['id']}."
                )
                return Reply(
                    409, {"error": "duplicate_idempotency_key", "message": message}
                )
        body, reply = self._parse_order(headers, raw_body)
        if reply is not None:
            return reply
        return self._store_order(key, body)

    def _validate_order(self, headers, raw_body) -> Reply:
        body, reply = self._parse_order(headers, raw_body)
        if reply is not None:
            return reply
        lines_total = sum(Decimal(line["line_total"]) for line in body["lines"])
        return Reply(
            200,
            {"valid": True, "lines_total": str(lines_total), "total": body["total"]},
        )

    def _parse_order(self, headers, raw_body):
        if (headers.get("Content-Type") or "").split(";")[0] != "application/json":
            return None, Reply(415, {"error": "unsupported_media_type"})
        try:
            body = json.loads(raw_body, parse_float=Decimal)
        except ValueError as exc:
            return None, _invalid({"body": [f"The body is not valid JSON: {exc}."]})
        errors = order_errors(body, self.currencies, self.skus, self.check_line_totals)
        if errors:
            return None, _invalid(errors)
        customer = body["customer"]["reference"]
        if self.known_customers is not None and customer not in self.known_customers:
            message = f"No customer has the reference {customer!r}."
            return None, Reply(404, {"error": "customer_not_found", "message": message})
        return body, None

    def _store_order(self, key: str, body: dict) -> Reply:
        order_id = len(self.orders) + 1
        order = {
            "id": order_id,
            "number": f"SO-{order_id:06d}",
            "state": "confirmed",
            "idempotency_key": key,
            **body,
        }
        self.orders[order_id] = order
        self.invoices[order_id] = {
            "id": order_id,
            "number": f"INV-{order_id:06d}",
            "order_id": order_id,
            "state": "posted",
            "currency": body["currency"],
            "total": body["total"],
            "paid_on": None,
            "credited_total": "0",
        }
        headers = {"Location": f"/api/orders/{order_id}"}
        return Reply(201, dict(order), headers)

    def _list_orders(self, query) -> Reply:
        keys = query.get("idempotency_key")
        found = [
            dict(order)
            for order in self.orders.values()
            if keys is None or order["idempotency_key"] in keys
        ]
        return Reply(200, {"results": found})

    def _cancel_order(self, order: dict) -> Reply:
        order["state"] = "cancelled"
        self.invoices[order["id"]]["state"] = "cancelled"
        return Reply(200, dict(order))


class _Handler(BaseHTTPRequestHandler):
    # HTTP/1.0 closes every connection after one response, so a dropped response
    # never leaves a half-used keep-alive connection in the client's pool.
    protocol_version = "HTTP/1.0"

    def do_GET(self):
        self._serve("GET")

    def do_POST(self):
        self._serve("POST")

    def do_PUT(self):
        self._serve("PUT")

    def do_DELETE(self):
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        fake = self.server.fake
        length = int(self.headers.get("Content-Length") or 0)
        raw_body = self.rfile.read(length) if length else b""
        reply, after = fake._handle(method, self.path, self.headers, raw_body)
        if after is not None and after.kind == "drop":
            return
        if after is not None and after.kind == "delay":
            fake._stopping.wait(after.seconds)
        if after is not None and after.kind == "hold":
            while not (after.release.wait(0.05) or fake._stopping.is_set()):
                pass
        try:
            self._write(reply)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up waiting, which is what a delay tests

    def _write(self, reply: Reply) -> None:
        payload = b"" if reply.body is None else json.dumps(reply.body).encode()
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        if reply.body is not None:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format, *args):
        pass  # keep test output quiet; the request counter records traffic


def order_errors(body, currencies, skus, check_line_totals=True) -> dict:
    """Return the field errors of an order body, ``{field: [message, ...]}``."""
    errors: dict[str, list[str]] = {}

    def add(name, message):
        errors.setdefault(name, []).append(message)

    if not isinstance(body, dict):
        return {"body": ["The body must be a JSON object."]}
    _check_fields(body, ORDER_FIELDS, frozenset(), "", add)
    _check_text(body, "crm_reference", "", add)
    _check_customer(body.get("customer"), add)
    currency = body.get("currency")
    if "currency" in body and currency not in currencies:
        add("currency", f"{currency!r} is not an accepted currency.")
    close_date = body.get("close_date")
    if "close_date" in body and not _is_iso_date(close_date):
        add("close_date", f"{close_date!r} is not a date in the form YYYY-MM-DD.")
    places = MINOR_UNITS.get(currency, 2)
    lines_total = _check_lines(body.get("lines"), skus, places, check_line_totals, add)
    total = _amount(body, "total", "", places, add)
    if total is not None and lines_total is not None and total != lines_total:
        add(
            "total",
            f"The total {total} is not the sum of the line totals, {lines_total}.",
        )
    return errors


def _check_fields(data, required, optional, prefix, add) -> None:
    for name in sorted(set(data) - required - optional):
        add(f"{prefix}{name}", "Unknown field.")
    for name in sorted(required - set(data)):
        add(f"{prefix}{name}", "This field is required.")


def _check_text(data, name, prefix, add) -> None:
    if name in data and not (isinstance(data[name], str) and data[name].strip()):
        add(f"{prefix}{name}", "This field must be a non-empty string.")


def _check_customer(customer, add) -> None:
    if customer is None:
        return
    if not isinstance(customer, dict):
        add("customer", "The customer must be an object with a reference and a name.")
        return
    _check_fields(customer, CUSTOMER_FIELDS, frozenset(), "customer.", add)
    for name in ("reference", "name"):
        _check_text(customer, name, "customer.", add)


def _check_lines(lines, skus, places, check_line_totals, add) -> Decimal | None:
    if lines is None:
        return None
    if not isinstance(lines, list) or not lines:
        add("lines", "An order needs at least one line.")
        return None
    totals = [
        _check_line(i, line, skus, places, check_line_totals, add)
        for i, line in enumerate(lines)
    ]
    return None if None in totals else sum(totals, Decimal(0))


def _check_line(index, line, skus, places, check_line_totals, add) -> Decimal | None:
    prefix = f"lines[{index}]."
    if not isinstance(line, dict):
        add(f"lines[{index}]", "Each line must be an object.")
        return None
    _check_fields(line, LINE_FIELDS, OPTIONAL_LINE_FIELDS, prefix, add)
    if "sku" in line and line["sku"] not in skus:
        add(f"{prefix}sku", f"Unknown SKU {line['sku']!r}.")

    quantity = _amount(line, "quantity", prefix, None, add)
    price = _amount(line, "unit_price", prefix, None, add)
    total = _amount(line, "line_total", prefix, places, add)
    discount = Decimal(0)
    if "discount_percent" in line:
        discount = _amount(line, "discount_percent", prefix, None, add)
        if discount is not None and not Decimal(0) <= discount <= Decimal(100):
            add(f"{prefix}discount_percent", f"{discount} is not between 0 and 100.")
    if None in (quantity, price, discount, total):
        return None

    net = quantity * price * (100 - discount) / 100
    expected = net.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    if check_line_totals and total != expected:
        add(f"{prefix}line_total", f"The line total {total} should be {expected}.")
    return total


def _amount(data, name, prefix, places, add) -> Decimal | None:
    """Parse an amount field; a missing field is reported by _check_fields."""
    if name not in data:
        return None
    value = data[name]
    if not isinstance(value, str):
        add(
            f"{prefix}{name}", "Send the amount as a decimal string, not a JSON number."
        )
        return None
    if not DECIMAL_PATTERN.match(value):
        add(f"{prefix}{name}", f"{value!r} is not a decimal number.")
        return None
    number = Decimal(value)
    if places is not None and -number.as_tuple().exponent > places:
        add(f"{prefix}{name}", f"{value} has more than {places} decimal places.")
        return None
    return number


def _is_iso_date(value) -> bool:
    if not (isinstance(value, str) and len(value) == 10):
        return False
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


def _int_or_none(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _invalid(errors: dict) -> Reply:
    return Reply(422, {"errors": errors})


def _not_found(what: str) -> Reply:
    return Reply(404, {"error": f"{what}_not_found", "message": f"No such {what}."})


def _unauthorized(error: str, message: str) -> Reply:
    headers = {"WWW-Authenticate": 'Bearer realm="fake-erp"'}
    return Reply(401, {"error": error, "message": message}, headers)


def _adapter_commands() -> dict:
    order_body = {
        name: f"{{{{ payload.{name} }}}}"
        for name in (
            "crm_reference",
            "customer",
            "currency",
            "close_date",
            "lines",
            "total",
        )
    }
    order_response = {"reference": "id", "number": "number", "data": {"state": "state"}}
    return {
        "sales_order.create": {
            "method": "POST",
            "path": "/api/orders",
            "body": order_body,
            "response": order_response,
            "match": {
                "total": "payload.total",
                "crm_reference": "payload.crm_reference",
            },
        },
        "preflight": {
            "method": "POST",
            "path": "/api/orders/validate",
            "body": order_body,
            "response": {"data": {"lines_total": "lines_total", "total": "total"}},
        },
        "find_existing": {
            "method": "GET",
            "path": "/api/orders?idempotency_key={key}",
            "response": {
                **order_response,
                "items": "results",
                "key": "idempotency_key",
            },
        },
        "compensate": {
            "method": "POST",
            "path": "/api/orders/{reference}/cancel",
            "response": {"data": {"state": "state"}},
        },
        "fetch_invoice": {"method": "GET", "path": "/api/invoices/{reference}"},
    }
