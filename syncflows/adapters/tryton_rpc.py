"""A small JSON-RPC client for trytond 8.2.

It logs in with ``common.db.login``, sends ``Authorization: Session
base64(login:user_id:session)``, appends the user's context to every
``model.*`` call, and encodes Decimal, date, datetime, time, timedelta and
bytes the way trytond's ``protocols/jsonrpc.py`` does, in both directions.
Amounts are decoded as Decimal, never as float.

Every failure is raised as an AdapterError with a reason code. The request
body has exactly the keys ``id``, ``method`` and ``params``, because trytond
8.2 responds to a body with any other key (such as ``jsonrpc``) with an
HTML page instead of a JSON error.
"""

import base64
import datetime
import itertools
import json
import logging
from decimal import Decimal

import requests

from syncflows.adapters.base import AdapterError

logger = logging.getLogger(__name__)

# Tryton's own message is kept, its description is shortened to this many
# characters, and the domain part of a UserError (which can be 28 KB) is dropped.
MAX_DESCRIPTION = 300

# Words in a non-UserError error that mean the same call can succeed later.
CONCURRENCY_MARKERS = (
    "concurrencyexception",
    "modified in the meanwhile",
    "could not serialize access",
    "deadlock detected",
    "database is locked",
    "could not obtain lock",
    "lock not available",
)


class TrytonJSONEncoder(json.JSONEncoder):
    """Encoder for the ``__class__`` objects that trytond's JSON-RPC expects."""

    def default(self, obj):
        if isinstance(obj, Decimal):
            return {"__class__": "Decimal", "decimal": str(obj)}
        if isinstance(obj, datetime.datetime):
            if obj.tzinfo is not None:
                # trytond stores naive UTC datetimes.
                obj = obj.astimezone(datetime.UTC).replace(tzinfo=None)
            return {
                "__class__": "datetime",
                **{part: getattr(obj, part) for part in _DATETIME_PARTS},
            }
        if isinstance(obj, datetime.date):
            return {
                "__class__": "date",
                "year": obj.year,
                "month": obj.month,
                "day": obj.day,
            }
        if isinstance(obj, datetime.time):
            return {
                "__class__": "time",
                **{part: getattr(obj, part) for part in _DATETIME_PARTS[3:]},
            }
        if isinstance(obj, datetime.timedelta):
            return {"__class__": "timedelta", "seconds": obj.total_seconds()}
        if isinstance(obj, bytes | bytearray):
            return {"__class__": "bytes", "base64": base64.b64encode(obj).decode()}
        if isinstance(obj, set | frozenset):
            return list(obj)
        return super().default(obj)


_DATETIME_PARTS = ("year", "month", "day", "hour", "minute", "second", "microsecond")


def decode_object(value: dict):
    """Turn a ``__class__`` object of a trytond response into its Python value."""
    kind = value.get("__class__")
    if kind == "Decimal":
        return Decimal(value["decimal"])
    if kind == "date":
        return datetime.date(value["year"], value["month"], value["day"])
    if kind == "datetime":
        return datetime.datetime(*(value[part] for part in _DATETIME_PARTS))
    if kind == "time":
        return datetime.time(*(value[part] for part in _DATETIME_PARTS[3:]))
    if kind == "timedelta":
        return datetime.timedelta(seconds=value["seconds"])
    if kind == "bytes":
        return base64.b64decode(value["base64"])
    return value


def dumps(data) -> str:
    return json.dumps(data, cls=TrytonJSONEncoder, separators=(",", ":"))


def loads(text: str):
    return json.loads(text, object_hook=decode_object, parse_float=Decimal)


class TrytonRPC:
    """A logged-in connection to one trytond database."""

    def __init__(
        self,
        url: str,
        database: str,
        login: str,
        password: str,
        *,
        timeout: float = 30,
    ):
        self.endpoint = f"{url.rstrip('/')}/{database}/rpc/"
        self.database = database
        self.login = login
        self._password = password
        self.timeout = timeout
        self.http = requests.Session()
        self.http.headers["Content-Type"] = "application/json"
        self._ids = itertools.count(1)
        self._authorization: str | None = None
        self.context: dict = {}

    def __repr__(self):
        return f"<TrytonRPC {self.login}@{self.endpoint}>"

    def call(self, method: str, *params, context: dict | None = None):
        """Call a trytond method.

        ``model.*`` and ``wizard.*`` calls get the user's context appended,
        updated with ``context``.
        """
        if self._authorization is None:
            self.authenticate()
        try:
            return self._post(method, self._with_context(method, params, context))
        except _Unauthorized:
            logger.info("Tryton session of %s expired; logging in again", self.login)
            self.authenticate()
        try:
            return self._post(method, self._with_context(method, params, context))
        except _Unauthorized:
            raise AdapterError(
                "auth_failed",
                f"Tryton rejected the session of user {self.login!r} twice on "
                f"{method}. Check the user's password and access rights.",
                detail={"method": method, "database": self.database},
            ) from None

    def model(self, model: str, method: str, *params, context: dict | None = None):
        return self.call(f"model.{model}.{method}", *params, context=context)

    def authenticate(self) -> None:
        """Log in and load the user's context (preferences)."""
        self._authorization = None
        try:
            result = self._post(
                "common.db.login",
                [self.login, {"password": self._password}, "en"],
            )
        except _Unauthorized:
            raise AdapterError(
                "auth_failed",
                f"Tryton rejected the login {self.login!r} on database "
                f"{self.database!r}. Check the password in the destination's "
                "credentials.",
                detail={"database": self.database},
            ) from None
        user_id, session = result[0], result[1]
        token = f"{self.login}:{user_id}:{session}".encode()
        self._authorization = "Session " + base64.b64encode(token).decode()
        self.context = {}
        self.context = self._post("model.res.user.get_preferences", [True, {}])
        logger.info("Logged in to Tryton %s as user %s", self.database, user_id)

    def close(self) -> None:
        self.http.close()

    def _with_context(self, method: str, params, context: dict | None) -> list:
        params = list(params)
        if method.startswith(("model.", "wizard.")):
            params.append({**self.context, **(context or {})})
        return params

    def _post(self, method: str, params: list):
        body = dumps({"id": next(self._ids), "method": method, "params": params})
        headers = {}
        if self._authorization:
            headers["Authorization"] = self._authorization
        try:
            response = self.http.post(
                self.endpoint, data=body.encode(), headers=headers, timeout=self.timeout
            )
        except requests.Timeout as exc:
            raise AdapterError(
                "erp_unavailable",
                f"Tryton did not answer {method} within {self.timeout} s.",
                transient=True,
                detail={"method": method},
            ) from exc
        except requests.ConnectionError as exc:
            raise AdapterError(
                "erp_unavailable",
                f"Tryton at {self.endpoint} could not be reached for {method}: "
                f"{type(exc).__name__}.",
                transient=True,
                detail={"method": method},
            ) from exc
        return self._parse(method, response)

    def _parse(self, method: str, response: requests.Response):
        status = response.status_code
        if status == 401:
            raise _Unauthorized()
        if status != 200:
            raise http_error(method, response)
        try:
            answer = loads(response.text)
        except ValueError as exc:
            raise AdapterError(
                "erp_unavailable",
                f"Tryton answered {method} with a body that is not JSON.",
                transient=True,
                detail={"method": method, "status": status},
            ) from exc
        if "error" in answer and answer["error"] is not None:
            raise tryton_error(method, answer["error"])
        return answer.get("result")


class _Unauthorized(Exception):
    """HTTP 401: the session is missing, expired or wrong."""


def http_error(method: str, response: requests.Response) -> AdapterError:
    status = response.status_code
    detail = {"method": method, "status": status}
    if status == 429:
        retry_after = _retry_after(response.headers.get("Retry-After"))
        return AdapterError(
            "rate_limited",
            f"Tryton asked to slow down (HTTP 429) on {method}.",
            transient=True,
            retry_after=retry_after,
            detail=detail,
        )
    if status >= 500:
        return AdapterError(
            "erp_unavailable",
            f"Tryton failed with HTTP {status} on {method}.",
            transient=True,
            detail=detail,
        )
    if status == 403:
        message = (
            f"Tryton refused {method} (HTTP 403): the method does not exist or "
            "is not allowed over RPC."
        )
    elif status == 422:
        message = f"Tryton rejected the arguments of {method} (HTTP 422)."
    else:
        message = f"Tryton rejected {method} with HTTP {status}."
    return AdapterError("erp_rejected", message, detail=detail)


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


def tryton_error(method: str, error) -> AdapterError:
    """Build the AdapterError for the ``error`` member of a JSON-RPC response."""
    if not isinstance(error, list | tuple) or not error:
        error = [str(error)]
    kind = error[0]
    args = error[1] if len(error) > 1 else None
    detail = {"method": method, "tryton_error": kind}
    if kind == "UserError" and isinstance(args, list | tuple) and args:
        return AdapterError(
            "erp_rejected", _user_message(args[0], args[1:2]), detail=detail
        )
    if kind == "UserWarning" and isinstance(args, list | tuple) and len(args) > 1:
        detail["warning"] = args[0]
        return AdapterError(
            "erp_rejected",
            _user_message(args[1], args[2:3])
            + " (a Tryton warning; a Tryton user must acknowledge it first)",
            detail=detail,
        )
    if kind == "ConcurrencyException":
        message = str(args or "Records were modified in the meanwhile")
        return AdapterError(
            "erp_unavailable",
            f"Tryton reported a concurrent change: {message}",
            transient=True,
            detail=detail,
        )
    text = str(kind)
    if any(marker in text.lower() for marker in CONCURRENCY_MARKERS):
        return AdapterError(
            "erp_unavailable",
            f"Tryton reported a lock or concurrency error on {method}: {text[:200]}",
            transient=True,
            detail=detail,
        )
    detail["tryton_error"] = text[:200]
    return AdapterError(
        "erp_rejected",
        f"Tryton failed on {method}: {text[:MAX_DESCRIPTION]}",
        detail=detail,
    )


def _user_message(message, description) -> str:
    message = str(message or "").strip() or "Tryton rejected the request."
    extra = str(description[0]).strip() if description and description[0] else ""
    if extra:
        if len(extra) > MAX_DESCRIPTION:
            extra = extra[:MAX_DESCRIPTION].rstrip() + "…"
        message = f"{message} {extra}"
    return message
