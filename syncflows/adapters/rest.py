"""An adapter for ERPs with a JSON API, configured entirely by destination settings.

Keys of ``destination.settings``:

``base_url``
    Root address of the API, ``http://`` or ``https://``, without a user name,
    password, query or fragment. Paths below are appended to it.
``timeout``
    Seconds to wait for a connection and for each read, default 10.
``idempotency_header``
    Optional name of the header that carries the command's idempotency key on
    command requests, for example ``Idempotency-Key``.
``auth``
    Optional. One of:

    - ``{"type": "bearer", "token_env": "ERP_TOKEN"}`` or ``"token_file"``;
    - ``{"type": "basic", "username": "...", "password_env": "..."}`` or
      ``"password_file"``;
    - ``{"type": "oauth2_client_credentials", "token_url": "...",
      "client_id": "...", "client_secret_env": "...", "scope": "...",
      "client_auth": "basic" | "post"}``. The token is cached until shortly
      before ``expires_in`` runs out.

    Instead of ``*_env`` or ``*_file``, the secret can be stored in the
    destination's encrypted ``credentials`` under ``token``, ``password`` or
    ``client_secret``. A secret written in clear in the settings is rejected.
    After a 401 or 403, the adapter refreshes the credentials once (a new
    OAuth2 token, or a fresh read of the variable or file) and repeats only
    the failed request if they changed.
``commands``
    One entry per command type (such as ``sales_order.create``) and per
    operation ``find_existing`` (required), ``preflight``, ``compensate`` and
    ``fetch_invoice`` (optional). Each entry has:

    - ``method``: GET, POST, PUT, PATCH or DELETE;
    - ``path``: a template such as ``/api/orders/{reference}/cancel``. Its
      ``{name}`` or ``{payload.crm_reference}`` placeholders are replaced by
      URL-encoded values;
    - ``body``: optional JSON template. A string ``"{{ payload.total }}"``
      becomes that value with its JSON type, ``{{ ... }}`` inside longer text
      is replaced by the value's text, and a trailing ``?`` as in
      ``"{{ line.discount_percent? }}"`` drops the key when the value is
      missing. ``{"$each": "payload.lines", "as": "line", "item": {...}}``
      renders ``item`` once per element. NOTE: amounts are sent as the decimal
      strings the command carries, and no template form sends a JSON number;
    - ``response``: dotted paths into the JSON response (``results.0.id``):
      ``reference`` (default ``id``), ``number`` (default ``number``) and
      ``data``, a mapping of names to paths stored in the result. For
      ``find_existing`` also ``items``, the path to the list of matches, and
      ``key``, the path to each match's idempotency key. For
      ``fetch_invoice``: ``reference``, ``number``, ``state``, ``currency``,
      ``total``, ``paid_on`` and ``credited_total``;
    - ``match`` (command types only): ``{document path: context path}``. After
      a 409, the document found by its key must carry these values, or the
      command fails with ``idempotency_conflict``;
    - ``state_map`` (``fetch_invoice`` only): ERP invoice states mapped to
      draft, posted, paid or cancelled.

    Placeholders can name ``payload``, ``key``, ``command_type``, ``mode`` and
    ``options`` for command types and ``preflight``, ``key`` for
    ``find_existing``, ``reference``, ``number`` and ``result`` for
    ``compensate``, and ``reference`` for ``fetch_invoice``.
``errors``
    Optional list of rules checked before the defaults, first match wins:
    ``{"status": 404 | [400, 422] | "4xx", "body_pattern": "unknown sku",
    "reason": "master_data_missing", "transient": false, "commands":
    ["sales_order.create"], "message": "..."}``. ``body_pattern`` is a
    case-insensitive regular expression searched in the response body.

Default classification: a connection error or timeout, 408 and 5xx are
transient ``erp_unavailable``. 429 is transient ``rate_limited`` with
``retry_after`` from ``Retry-After``. 401 or 403 after one refresh is
``auth_failed``. 409 on a command makes the adapter look the key up with
``find_existing`` and return the document found, else ``idempotency_conflict``.
400 and 422 are ``erp_rejected`` with the field errors in the message. Any
other status is ``erp_rejected``, except that a 404 from ``find_existing`` or
``fetch_invoice`` returns None. Redirects are not followed.

``preflight`` returns the command's currency, total and the sum of its line
totals, updated with the ``response.data`` of the ``preflight`` request if
one is configured.
"""

import email.utils
import json
import logging
from datetime import UTC, datetime
from decimal import Decimal
from http import HTTPStatus
from urllib.parse import urlsplit

import requests

from meshline.money import MoneyError, to_decimal
from syncflows.adapters.base import (
    Adapter,
    AdapterError,
    CommandData,
    ExecutionResult,
    InvoiceInfo,
)
from syncflows.adapters.rest_auth import build_auth
from syncflows.adapters.rest_settings import (
    MISSING,
    OPERATIONS,
    CommandSpec,
    TemplateError,
    lookup,
    parse_settings,
    plain,
    render_body,
    render_path,
)

logger = logging.getLogger(__name__)

INVOICE_STATES = ("draft", "posted", "paid", "cancelled")
BODY_SUMMARY_BYTES = 2048


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Parse a Retry-After header given in seconds or as an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


def summarise_body(text: str) -> str:
    raw = text.encode("utf-8", errors="replace")
    if len(raw) <= BODY_SUMMARY_BYTES:
        return text
    kept = raw[:BODY_SUMMARY_BYTES].decode("utf-8", errors="ignore")
    return f"{kept}… ({len(raw)} bytes, truncated)"


def field_errors(body) -> dict:
    """Read field errors as ``{field: [message]}`` from common error-body shapes."""
    errors = body.get("errors") if isinstance(body, dict) else None
    if isinstance(errors, dict):
        return {
            str(name): [
                str(m) for m in (messages if isinstance(messages, list) else [messages])
            ]
            for name, messages in errors.items()
        }
    found = {}
    for item in errors if isinstance(errors, list) else []:
        if isinstance(item, dict) and "message" in item:
            found.setdefault(str(item.get("field", "body")), []).append(
                str(item["message"])
            )
    return found


def body_message(body, errors: dict) -> str:
    if errors:
        return "; ".join(
            f"{name}: {' '.join(messages)}" for name, messages in errors.items()
        )
    if isinstance(body, dict):
        for key in ("message", "detail", "error_description", "error"):
            if isinstance(body.get(key), str):
                return body[key]
    return ""


def status_text(status: int) -> str:
    try:
        return f"{status} {HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


def default_status_class(status: int) -> tuple[str, bool, str]:
    """Return the reason code, transient flag and message verb for a status."""
    if status == 429:
        return "rate_limited", True, "rate-limited"
    if status == 408 or status >= 500:
        return "erp_unavailable", True, "returned {status} for"
    if status in (401, 403):
        return "auth_failed", False, "rejected the credentials ({status}) for"
    if status == 409:
        return "idempotency_conflict", False, "returned {status} for"
    if status in (400, 422):
        return "erp_rejected", False, "rejected ({status})"
    return "erp_rejected", False, "returned {status} for"


class RestAdapter(Adapter):
    """An ERP destination reached over a JSON API described by its settings.

    NOTE: one instance per worker thread. The OAuth2 token cache is locked, but
    requests does not document ``Session`` as thread-safe.
    """

    def __init__(self, destination):
        super().__init__(destination)
        self.slug = destination.slug
        parsed = parse_settings(self.slug, self.settings)
        self.base_url = parsed.base_url
        self.timeout = parsed.timeout
        self.idempotency_header = parsed.idempotency_header
        self.commands = parsed.commands
        self.rules = parsed.rules
        self.session = requests.Session()
        self.auth = build_auth(
            self.slug,
            self.settings.get("auth"),
            destination.credentials,
            self.base_url,
            self._fetch_token,
        )

    # Interface

    def preflight(self, command: CommandData) -> dict:
        self._command_spec(command.command_type)
        totals = local_totals(command.payload)
        spec = self.commands.get("preflight")
        if spec is None:
            return totals
        context = command_context(command)
        path, response = self._send("preflight", spec, context)
        document = self._checked_json("preflight", spec, path, response)
        return {**totals, **response_data(spec, document)}

    def execute(self, command: CommandData) -> ExecutionResult:
        spec = self._command_spec(command.command_type)
        headers = {}
        if self.idempotency_header:
            headers[self.idempotency_header] = command.idempotency_key
        context = command_context(command)
        path, response = self._send(command.command_type, spec, context, headers)
        if response.status_code == 409:
            return self._resolve_conflict(command, spec, context, path, response)

        document = self._checked_json(command.command_type, spec, path, response)
        result = self._result(command.command_type, spec, document, path)
        logger.info(
            "Destination %s: %s with key %s created document %s (%s).",
            self.slug, command.command_type, command.idempotency_key,
            result.reference, result.document_number,
        )  # fmt: skip
        return result

    def find_existing(self, idempotency_key: str) -> ExecutionResult | None:
        found = self._find_document(idempotency_key)
        return None if found is None else found[0]

    def compensate(self, result: dict) -> dict:
        spec = self._operation_spec("compensate", "reverse documents")
        reference = result.get("reference")
        if not reference:
            message = "The result to compensate has no reference."
            raise AdapterError("schema_invalid", message)
        number = result.get("document_number", "")
        context = {"reference": reference, "number": number, "result": result}
        path, response = self._send("compensate", spec, context)
        document = self._checked_json("compensate", spec, path, response)
        logger.info("Destination %s: compensated document %s.", self.slug, reference)
        return {
            "reference": str(reference),
            "document_number": number,
            "status": response.status_code,
            **response_data(spec, document),
        }

    def fetch_invoice(self, reference: str) -> InvoiceInfo | None:
        spec = self._operation_spec("fetch_invoice", "read invoices")
        path, response = self._send("fetch_invoice", spec, {"reference": reference})
        if response.status_code == 404:
            return None
        document = self._checked_json("fetch_invoice", spec, path, response)
        return self._invoice(spec, document, path)

    def classify(self, exc: Exception) -> AdapterError:
        if isinstance(exc, AdapterError):
            return exc
        where = f"the ERP at destination {self.slug}"
        if isinstance(exc, requests.Timeout):
            message = f"{where} timed out after {self.timeout:g} s: {exc}"
        elif isinstance(exc, requests.ConnectionError):
            message = (
                f"Could not reach {where}, or it closed the connection "
                f"before responding: {exc}"
            )
        else:
            return super().classify(exc)
        message = self._redact(message[0].upper() + message[1:])
        return AdapterError("erp_unavailable", message, transient=True)

    def close(self) -> None:
        self.session.close()

    # Requests

    def _send(self, operation: str, spec: CommandSpec, context: dict, headers=None):
        """Send a configured request; repeat it once if refreshed credentials differ."""
        try:
            path = render_path(spec.path, context)
            body = None if spec.body is None else render_body(spec.body, context)
        except TemplateError as exc:
            message = (
                f"Destination {self.slug}: the template of "
                f"settings.commands.{spec.name} failed because {exc}."
            )
            raise AdapterError("schema_invalid", message) from None

        url = self.base_url + path
        response = self._request(spec.method, url, path, body, headers)
        if response.status_code in (401, 403) and self.auth.refresh():
            logger.info(
                "Destination %s: %s %s returned %s; refreshed the credentials "
                "and repeating the request once.",
                self.slug, spec.method, path, response.status_code,
            )  # fmt: skip
            response = self._request(spec.method, url, path, body, headers)
        return path, response

    def _request(self, method, url, path, body=None, headers=None, **options):
        """Send a request; ``options`` are ``form``, ``basic`` and ``auth``."""
        request_headers = {"Accept": "application/json", **(headers or {})}
        if options.get("auth", True):
            self.auth.apply(request_headers)
        data = options.get("form")
        if body is not None:
            data = json.dumps(body, default=_json_default)
            request_headers["Content-Type"] = "application/json"
        try:
            response = self.session.request(
                method, url, data=data, headers=request_headers,
                auth=options.get("basic"), timeout=self.timeout,
                allow_redirects=False,
            )  # fmt: skip
        except requests.RequestException as exc:
            error = self.classify(exc)
            logger.warning(
                "Destination %s: %s %s failed: %s",
                self.slug, method, path, error.message,
            )  # fmt: skip
            raise error from None
        logger.debug(
            "Destination %s: %s %s returned %s.",
            self.slug, method, path, response.status_code,
        )  # fmt: skip
        return response

    def _fetch_token(self, url: str, form: dict, basic) -> dict:
        path = urlsplit(url).path
        response = self._request("POST", url, path, form=form, basic=basic, auth=False)
        if response.status_code in (400, 401, 403):
            error = self._response_error("token", "POST", path, response)
            message = (
                f"The token endpoint of destination {self.slug} rejected the "
                f"client credentials ({status_text(response.status_code)})."
            )
            raise AdapterError("auth_failed", message, detail=error.detail)

        spec = CommandSpec("token", "POST", path)
        document = self._checked_json("token", spec, path, response)
        if not isinstance(document, dict) or not document.get("access_token"):
            message = (
                f"The token endpoint of destination {self.slug} "
                "returned no access_token."
            )
            raise AdapterError("auth_failed", message)
        logger.info("Destination %s: fetched an OAuth2 access token.", self.slug)
        return document

    def _checked_json(self, operation: str, spec: CommandSpec, path: str, response):
        """Return the parsed JSON of a 2xx response, or raise its AdapterError."""
        if not 200 <= response.status_code < 300:
            raise self._response_error(operation, spec.method, path, response)
        if not response.content:
            return None
        try:
            return json.loads(response.content, parse_float=Decimal)
        except ValueError:
            # Transient because a 2xx may mean the ERP wrote the document: the
            # retry starts with find_existing, which returns it.
            message = (
                f"The ERP at destination {self.slug} returned "
                f"{status_text(response.status_code)} for {spec.method} {path} "
                "with a body that is not JSON."
            )
            detail = {
                "status": response.status_code,
                "body": summarise_body(self._redact(response.text)),
            }
            raise AdapterError(
                "erp_unavailable", message, transient=True, detail=detail
            ) from None

    def _response_error(self, operation, method, path, response) -> AdapterError:
        status, text = response.status_code, self._redact(response.text)
        try:
            body = json.loads(text, parse_float=Decimal) if text else None
        except ValueError:
            body = None
        errors = field_errors(body)
        detail = {
            "status": status,
            "method": method,
            "path": path,
            "body": summarise_body(text),
        }
        if errors:
            detail["field_errors"] = errors

        reason, transient, message = self._classify_status(operation, response, text)
        words = body_message(body, errors)
        if words and not transient and reason != "auth_failed":
            message = f"{message}: {words}"
        logger.warning(
            "Destination %s: %s %s returned %s, classified as %s (%s).",
            self.slug, method, path, status, reason,
            "transient" if transient else "permanent",
        )  # fmt: skip
        return AdapterError(
            reason,
            self._redact(message),
            transient=transient,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
            detail=detail,
        )

    def _classify_status(self, operation, response, text) -> tuple[str, bool, str]:
        status = response.status_code
        request = f"{response.request.method} {urlsplit(response.request.url).path}"
        where = f"The ERP at destination {self.slug}"
        for rule in self.rules:
            if rule.matches(operation, status, text):
                message = f"{where} returned {status_text(status)} for {request}"
                return rule.reason, rule.transient, rule.message or message
        if 300 <= status < 400:
            location = response.headers.get("Location", "another address")
            message = (
                f"{where} redirected {request} to {location}; "
                "set settings.base_url to the final address"
            )
            return "erp_rejected", False, message
        reason, transient, verb = default_status_class(status)
        return (
            reason,
            transient,
            f"{where} {verb.format(status=status_text(status))} {request}",
        )

    # Commands and results

    def _command_spec(self, command_type: str) -> CommandSpec:
        if command_type in OPERATIONS or command_type not in self.commands:
            message = (
                f"Destination {self.slug} has no settings.commands entry "
                f"for the command type {command_type!r}."
            )
            raise AdapterError("mapping_missing", message)
        return self.commands[command_type]

    def _operation_spec(self, operation: str, purpose: str) -> CommandSpec:
        if operation not in self.commands:
            message = (
                f"Destination {self.slug} has no settings.commands.{operation}, "
                f"so Meshline cannot {purpose} there."
            )
            raise AdapterError("mapping_missing", message)
        return self.commands[operation]

    def _find_document(self, key: str):
        """Return ``(result, document)`` for the document carrying ``key``, or None."""
        spec = self.commands["find_existing"]
        path, response = self._send("find_existing", spec, {"key": key})
        if response.status_code == 404:
            return None
        document = self._checked_json("find_existing", spec, path, response)
        items = document
        if "items" in spec.response:
            items = lookup(document, spec.response["items"], None)
        items = [items] if isinstance(items, dict) else list(items or [])
        key_path = spec.response.get("key")
        if key_path:
            items = [item for item in items if str(lookup(item, key_path, "")) == key]
        if not items:
            return None
        if len(items) > 1:
            message = (
                f"The ERP at destination {self.slug} holds {len(items)} "
                f"documents with the idempotency key {key}."
            )
            detail = {"key": key, "count": len(items)}
            raise AdapterError("idempotency_conflict", message, detail=detail)
        return self._result("find_existing", spec, items[0], path), items[0]

    def _resolve_conflict(self, command, spec, context, path, response):
        """Return the document behind a 409 if it has the same key and values."""
        key = command.idempotency_key
        found = self._find_document(key)
        if found is None:
            error = self._response_error(
                command.command_type, spec.method, path, response
            )
            error.message = f"{error.message}. No document carries the key {key}."
            error.args = (error.message,)
            raise error

        result, document = found
        differences = match_differences(spec.match, document, context)
        if differences:
            message = (
                f"The ERP at destination {self.slug} already holds document "
                f"{result.document_number} with the key {key}, but it differs "
                f"from the command in {', '.join(sorted(differences))}."
            )
            detail = {"differences": differences, "reference": result.reference}
            raise AdapterError("idempotency_conflict", message, detail=detail)
        logger.info(
            "Destination %s: key %s was already used by document %s; returning it.",
            self.slug, key, result.reference,
        )  # fmt: skip
        result.data["found_existing"] = True
        return result

    def _result(self, operation, spec, document, path) -> ExecutionResult:
        reference = self._required(operation, spec, document, "reference", path)
        number = self._required(operation, spec, document, "number", path)
        data = response_data(spec, document)
        return ExecutionResult(str(reference), str(number), data)

    def _required(self, operation, spec, document, name, path):
        value = lookup(document, spec.response[name], None)
        if value is None:
            message = (
                f"The ERP's response to {spec.method} {path} has no {name} at "
                f"{spec.response[name]!r}; check "
                f"settings.commands.{operation}.response.{name}."
            )
            raise AdapterError("erp_rejected", message)
        return plain(value)

    def _invoice(self, spec: CommandSpec, document, path) -> InvoiceInfo:
        def value(name):
            return self._required("fetch_invoice", spec, document, name, path)

        state = str(value("state"))
        state = spec.state_map.get(state, state)
        if state not in INVOICE_STATES:
            message = (
                f"Destination {self.slug}: the invoice state {state!r} has no "
                "mapping; add it to settings.commands.fetch_invoice.state_map."
            )
            raise AdapterError("mapping_missing", message)
        credited = plain(lookup(document, spec.response["credited_total"], None))
        paid_on = lookup(document, spec.response["paid_on"], None)
        return InvoiceInfo(
            reference=str(value("reference")),
            number=str(value("number")),
            state=state,
            currency=str(value("currency")),
            total=self._amount(value("total"), "total", path),
            paid_on=None if paid_on is None else str(paid_on),
            credited_total=self._amount(credited or "0", "credited total", path),
        )

    def _amount(self, value, what: str, path: str) -> str:
        try:
            return str(to_decimal(value, what))
        except MoneyError as exc:
            message = f"The ERP's response to GET {path} is invalid: {exc}"
            raise AdapterError("erp_rejected", message) from None

    def _redact(self, text: str) -> str:
        for secret in self.auth.secrets():
            if len(secret) >= 4:
                text = text.replace(secret, "[secret]")
        return text


def command_context(command: CommandData) -> dict:
    return {
        "payload": command.payload,
        "key": command.idempotency_key,
        "command_type": command.command_type,
        "mode": command.mode,
        "options": command.options,
    }


def local_totals(payload: dict) -> dict:
    """Sum the line totals and read the total as Decimal, without any request."""
    lines = payload.get("lines")
    if lines is None:
        return {}
    try:
        line_totals = [
            to_decimal(line.get("line_total"), f"line total of lines[{index}]")
            for index, line in enumerate(lines)
        ]
        total = to_decimal(payload.get("total"), "total")
    except (MoneyError, AttributeError, TypeError) as exc:
        message = f"The command's amounts are invalid: {exc}"
        raise AdapterError("schema_invalid", message) from None
    return {
        "currency": payload.get("currency"),
        "lines_total": str(sum(line_totals, Decimal(0))),
        "total": str(total),
    }


def response_data(spec: CommandSpec, document) -> dict:
    """Return the values named by ``response.data`` that the document contains."""
    data = {}
    for name, dotted in spec.response.get("data", {}).items():
        value = MISSING if document is None else lookup(document, dotted, MISSING)
        if value is not MISSING:
            data[name] = plain(value)
    return data


def match_differences(match: dict, document: dict, context: dict) -> dict:
    differences = {}
    for document_path, context_path in match.items():
        actual = plain(lookup(document, document_path, None))
        expected = plain(lookup(context, context_path, None))
        if not _same_value(actual, expected):
            differences[document_path] = {"erp": actual, "command": expected}
    return differences


def _same_value(actual, expected) -> bool:
    try:
        return to_decimal(actual) == to_decimal(expected)
    except MoneyError:
        return actual == expected


def _json_default(value):
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
