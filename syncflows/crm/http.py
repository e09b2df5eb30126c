"""HTTP calls to a CRM API: pacing, retries with backoff, one token refresh.

Each call is retried on its own, so a read that pages through a collection
resumes at the page that failed and never fetches an earlier page again.
Each call, retries included, first waits for its slot from
``syncflows.crm.pacing``, which every worker process shares.
"""

import logging
import random
import time

import requests

from syncflows.connectors.base import ParseError, load_json
from syncflows.crm.errors import CrmError
from syncflows.crm.pacing import pacer_for

logger = logging.getLogger(__name__)

BACKOFF_BASE_SECONDS = 0.5
# Rate-limit headers that state the calls left in the current window.
REMAINING_HEADERS = (
    "X-HubSpot-RateLimit-Secondly-Remaining",
    "X-HubSpot-RateLimit-Remaining",
    "X-RateLimit-Remaining",
)


def sleep(seconds: float) -> None:
    """Wait; tests replace this function to record the waits instead."""
    time.sleep(seconds)


def backoff_seconds(attempt: int, retry_after: float | None) -> float:
    """Return the wait before attempt ``attempt + 1``: Retry-After when the CRM
    sent one, else exponential backoff, both with up to 10 % added jitter."""
    base = (
        retry_after
        if retry_after is not None
        else BACKOFF_BASE_SECONDS * 2 ** (attempt - 1)
    )
    return base + random.uniform(0, base * 0.1)


def parse_retry_after(headers) -> float | None:
    value = headers.get("Retry-After") or headers.get("X-RateLimit-Reset")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        # An HTTP date form of Retry-After; one second is a safe floor.
        return 1.0


class Transport:
    """Sends the calls of one read. ``classify(status, body, headers)`` maps an
    error response to a CrmError; ``auth`` supplies headers and refreshes."""

    def __init__(self, access, auth, classify):
        self.access = access
        self.auth = auth
        self.classify = classify
        self.base_url = access.base_url.rstrip("/")
        self.session = requests.Session()
        self.pacer = pacer_for(access)
        self.refreshed = False
        self.stats = {
            "requests": 0,
            "retries": 0,
            "rate_limited": 0,
            "refreshes": 0,
            "remaining": None,
            "retry_after": None,
            "errors": [],
        }

    def get(self, path: str, params=None):
        return self.request("GET", path, params=params)

    def post(self, path: str, body: dict):
        return self.request("POST", path, json_body=body)

    def request(self, method: str, path: str, *, params=None, json_body=None):
        url = path if path.startswith(("http://", "https://")) else self.base_url + path
        attempt = 0
        while True:
            attempt += 1
            error = self._attempt(method, url, params, json_body)
            if not isinstance(error, CrmError):
                return error
            self._note_error(error, method, path)
            if error.reason_code == "auth_failed" and self._can_refresh():
                self._refresh()
                attempt -= 1
                continue
            if not error.transient:
                raise error
            wait = backoff_seconds(attempt, error.retry_after)
            if (
                attempt >= self.access.max_attempts
                or wait > self.access.max_wait_seconds
            ):
                error.retry_after = max(wait, error.retry_after or 0)
                raise error
            self.stats["retries"] += 1
            logger.warning(
                "CRM call %s %s of connector %s failed (%s, attempt %s); "
                "retrying in %.1f s",
                method,
                path,
                self.access.connector_id,
                error.crm_code or error.reason_code,
                attempt,
                wait,
            )
            sleep(wait)

    def _attempt(self, method, url, params, json_body):
        """Return the decoded body of a successful call, or the CrmError."""
        try:
            self.pacer.wait(self.access.max_wait_seconds)
        except CrmError as error:
            # The slot starts after the longest wait allowed: defer the read.
            self.stats["retry_after"] = error.retry_after
            return error
        self.stats["requests"] += 1
        try:
            response = self.session.request(
                method,
                url,
                params=params,
                json=json_body,
                headers={
                    "Accept": "application/json",
                    **self.auth.headers(self.session),
                },
                timeout=self.access.timeout_seconds,
            )
        except requests.Timeout:
            return CrmError(
                "crm_unavailable",
                f"The CRM did not answer {method} {_path(url)} in time.",
                transient=True,
            )
        except requests.ConnectionError as exc:
            return CrmError(
                "crm_unavailable",
                f"The CRM could not be reached for {method} {_path(url)}: "
                f"{type(exc).__name__}.",
                transient=True,
            )
        self._note_headers(response)
        body = _decode(response)
        if response.status_code < 400:
            return body
        error = self.classify(response.status_code, body, response.headers)
        if error.reason_code == "rate_limited":
            self.stats["rate_limited"] += 1
            self.stats["retry_after"] = error.retry_after
            self.pacer.block_for(error.retry_after or BACKOFF_BASE_SECONDS)
        return error

    def _can_refresh(self) -> bool:
        # One refresh per read: a second authentication failure is final.
        return not self.refreshed and self.auth.can_refresh

    def _refresh(self) -> None:
        self.refreshed = True
        self.stats["refreshes"] += 1
        self.auth.refresh(self.session)

    def _note_headers(self, response) -> None:
        for name in REMAINING_HEADERS:
            value = response.headers.get(name)
            if value is not None and value.strip().lstrip("-").isdigit():
                self.stats["remaining"] = int(value)
                return
        limit_info = response.headers.get("Sforce-Limit-Info", "")
        if limit_info.startswith("api-usage="):
            used, _, limit = limit_info.removeprefix("api-usage=").partition("/")
            if used.isdigit() and limit.isdigit():
                self.stats["remaining"] = int(limit) - int(used)

    def _note_error(self, error: CrmError, method: str, path: str) -> None:
        self.stats["errors"].append(
            {
                "reason_code": error.reason_code,
                "status": error.status,
                "crm_code": error.crm_code,
                "message": f"{method} {_path(path)}: {error.message}"[:500],
            }
        )

    def close(self) -> None:
        self.session.close()


def _path(url: str) -> str:
    """Return the URL without its query string, which may carry a token or a query."""
    return url.split("?", 1)[0]


def _decode(response):
    if not response.content:
        return None
    try:
        return load_json(response.content)
    except ParseError:
        return {"raw": response.text[:500]}
