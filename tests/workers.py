"""Helpers for tests that run Meshline in other processes against the test database.

The subprocesses read their settings from the environment, exactly as a deployed
worker does, so each one gets ``DATABASE_URL`` pointing at the test database.
"""

import base64
import json
import os
import random
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from urllib.parse import quote

import pytest
from django.conf import settings
from django.db import connection

PROJECT_DIR = Path(__file__).resolve().parent.parent
PIPEDRIVE_USER = "meshline"
PIPEDRIVE_PASSWORD = "demo-pipedrive-password"


def require_postgresql() -> None:
    """Skip the test unless it runs on PostgreSQL, which other processes can share."""
    if connection.vendor != "postgresql":
        pytest.skip(
            "Worker subprocesses need the PostgreSQL test database: set DATABASE_URL."
        )


def database_url() -> str:
    """Return a ``DATABASE_URL`` for the database this test process uses."""
    params = connection.settings_dict
    user = quote(params.get("USER") or "postgres", safe="")
    if params.get("PASSWORD"):
        user += ":" + quote(params["PASSWORD"], safe="")
    host = params.get("HOST") or "127.0.0.1"
    port = params.get("PORT") or "5432"
    return f"postgresql://{user}@{host}:{port}/{params['NAME']}"


def subprocess_env(**extra: str) -> dict:
    """Return the environment of a worker process on the test database."""
    env = dict(os.environ)
    env.update(
        DATABASE_URL=database_url(),
        # Connector secrets are encrypted under a key derived from SECRET_KEY,
        # so a child must use the key of the process that stored them.
        SECRET_KEY=settings.SECRET_KEY,
        DJANGO_SETTINGS_MODULE="meshline.settings",
        DEBUG="1",
        MESHLINE_SYNC_PIPELINE="0",
        MESHLINE_BACKOFF_BASE_SECONDS="0",
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


class Process:
    """A child process in its own process group, with its output in files."""

    def __init__(self, name: str, args: list[str], env: dict, log_dir: Path):
        self.name = name
        self.stdout_path = log_dir / f"{name}.out"
        self.stderr_path = log_dir / f"{name}.err"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            # A new session makes the child the leader of its own process group,
            # so stop() also reaches the workers that qcluster forks.
            self.popen = subprocess.Popen(
                args,
                cwd=PROJECT_DIR,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.popen.pid

    def wait(self, timeout: float) -> int:
        """Wait for the exit code; raise AssertionError with the log on a timeout."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"{self.name} did not exit within {timeout} s.\n{self.stderr_tail()}"
            ) from None

    def kill(self) -> None:
        """Send SIGKILL to this process only, as a crash would end it."""
        if self.popen.poll() is None:
            os.kill(self.popen.pid, signal.SIGKILL)
            self.popen.wait(timeout=10)

    def stop(self, grace: float = 15.0) -> None:
        """Send SIGTERM to the process, then SIGKILL to its group.

        The group signal after the grace period, or after a clean exit, ends any
        child that the process forked and left behind (qcluster's workers).
        """
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.popen.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.popen.wait(timeout=10)

    def terminate(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()

    def output(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def result(self) -> dict:
        """Parse the JSON summary that the worker prints as its last stdout line."""
        lines = self.output().strip().splitlines()
        if not lines:
            raise AssertionError(
                f"{self.name} printed no summary.\n{self.stderr_tail()}"
            )
        return json.loads(lines[-1])

    def stderr_tail(self, size: int = 4000) -> str:
        text = self.stderr_path.read_text(encoding="utf-8", errors="replace")
        return f"--- {self.name} stderr (last {size} characters) ---\n{text[-size:]}"


def stop_all(processes: list[Process]) -> None:
    """Stop every process, sending SIGTERM to all of them before waiting for any."""
    for process in processes:
        process.terminate()
    for process in processes:
        process.stop()


def start_worker(name: str, log_dir: Path, *options: str, env: dict | None = None):
    """Start ``tests.reliability_worker`` with ``options``; return its Process."""
    args = [sys.executable, "-m", "tests.reliability_worker", *options]
    return Process(name, args, env or subprocess_env(), log_dir)


def start_qcluster(name: str, log_dir: Path, env: dict) -> Process:
    args = [sys.executable, "manage.py", "qcluster"]
    return Process(name, args, env, log_dir)


def wait_for_files(paths: list[Path], processes: list[Process], timeout: float) -> None:
    """Wait until every path exists; fail early if a process has exited."""
    deadline = time.monotonic() + timeout
    while not all(path.exists() for path in paths):
        for process in processes:
            if process.popen.poll() is not None:
                raise AssertionError(
                    f"{process.name} exited with {process.popen.returncode} before it "
                    f"was ready.\n{process.stderr_tail()}"
                )
        if time.monotonic() > deadline:
            raise AssertionError(f"Not ready after {timeout} s: {paths}")
        time.sleep(0.05)


def wait_until(condition, timeout: float, processes: list[Process], description: str):
    """Poll ``condition`` every 50 ms until it returns a true value; return it."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        for process in processes:
            if process.popen.poll() is not None:
                raise AssertionError(
                    f"{process.name} exited with {process.popen.returncode} while "
                    f"waiting for {description}.\n{process.stderr_tail()}"
                )
        if time.monotonic() > deadline:
            raise AssertionError(
                f"Timed out after {timeout} s waiting for {description}."
            )
        time.sleep(0.05)


def won_deals(count: int, first_id: int, seed: int) -> list[tuple[int, Decimal]]:
    """Return ``count`` distinct Pipedrive deal ids with a random EUR value each."""
    rng = random.Random(seed)
    deals = []
    for deal_id in range(first_id, first_id + count):
        value = Decimal(f"{rng.randint(100, 99999)}.{rng.randint(0, 99):02d}")
        deals.append((deal_id, value))
    return deals


def pipedrive_won_body(
    deal_id: int, value: Decimal, webhook_id: str = "111111"
) -> dict:
    """Return a Pipedrive v1 "deal updated to won" webhook body."""
    from syncflows.demo import _pipedrive_won

    when = datetime(2026, 11, 1, 9, 0, tzinfo=UTC) + timedelta(minutes=deal_id % 50000)
    body = _pipedrive_won(deal_id, str(value), "EUR", when)
    body["meta"]["webhook_id"] = webhook_id
    return body


def pipedrive_auth_header() -> str:
    token = f"{PIPEDRIVE_USER}:{PIPEDRIVE_PASSWORD}".encode()
    return "Basic " + base64.b64encode(token).decode()


def pipedrive_request(body: dict):
    """Return a DeliveryRequest of a Pipedrive webhook ``body`` with its basic auth."""
    from django.utils import timezone
    from django.utils.datastructures import CaseInsensitiveMapping

    from syncflows.connectors import DeliveryRequest

    headers = {
        "Content-Type": "application/json",
        "Authorization": pipedrive_auth_header(),
    }
    return DeliveryRequest(
        method="POST",
        url="http://127.0.0.1:8000/api/v1/inbound/pipedrive/",
        headers=CaseInsensitiveMapping(headers),
        body=json.dumps(body).encode(),
        received_at=timezone.now(),
    )


def process_group_exists(pgid: int) -> bool:
    """Return whether any process of the process group ``pgid`` is still running."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True
