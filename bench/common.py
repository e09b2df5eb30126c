"""Shared pieces of the benchmarks: settings, signed bodies and child processes.

Every server and worker started here runs in its own process group, so that
stopping it also stops the processes it forked, and nothing else.
"""

import base64
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
HOST = "127.0.0.1"
PIPEDRIVE_USER = "meshline"

DEFAULT_ENV = {
    "DJANGO_SETTINGS_MODULE": "bench.settings",
    "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/meshline_bench",
    # Connector secrets are encrypted under a key derived from SECRET_KEY, so
    # every process of one run must share it.
    "SECRET_KEY": "bench-only-secret-key-not-for-production",
    "LOG_LEVEL": "WARNING",
    "MESHLINE_SYNC_PIPELINE": "0",
    # The benchmarks send plain HTTP on the loopback. In production a proxy in
    # front of gunicorn terminates TLS, which is not part of the measurement.
    "SECURE_SSL_REDIRECT": "0",
}


def configure() -> None:
    """Set the benchmark environment defaults and set Django up."""
    for name, value in DEFAULT_ENV.items():
        os.environ.setdefault(name, value)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import django

    django.setup()


def load_configuration():
    """Load the demo connectors, briefs and sandbox catalogue; return Pipedrive's."""
    from syncflows.demo import load_demo_configuration

    return load_demo_configuration()["pipedrive"]


def first_deal_id() -> int:
    """Return a deal id that no earlier run of this second has used.

    Every benchmark body is a distinct deal, so that no delivery takes the
    duplicate short-cut, even when a script runs twice on one database.
    """
    return int(time.time()) * 100_000


def pipedrive_bodies(count: int, first_id: int) -> list[bytes]:
    """Build ``count`` Pipedrive v1 "deal won" bodies, one distinct deal each."""
    from syncflows.demo import _pipedrive_won

    start = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
    bodies = []
    for index in range(count):
        when = start + timedelta(seconds=index)
        amount = f"{100 + index % 9000}.{index % 100:02d}"
        deal = _pipedrive_won(first_id + index, amount, "EUR", when)
        bodies.append(json.dumps(deal).encode())
    return bodies


def pipedrive_headers() -> dict:
    from syncflows.demo import DEMO_SECRETS

    token = f"{PIPEDRIVE_USER}:{DEMO_SECRETS['pipedrive']}".encode()
    return {
        "Content-Type": "application/json",
        "Authorization": "Basic " + base64.b64encode(token).decode(),
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def child_env(**extra) -> dict:
    env = dict(os.environ)
    for name, value in DEFAULT_ENV.items():
        env.setdefault(name, value)
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


def _stop(process: subprocess.Popen, name: str, grace: float = 10) -> None:
    """Ask the leader to stop its children; kill the whole group if it does not,
    and also whatever children it left behind."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            print(f"{name} (pid {process.pid}) ignored SIGTERM; killing it", flush=True)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # the group is empty: every process of it has exited
    process.wait(timeout=grace)


def _wait_for_health(base_url: str, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gunicorn exited with code {process.returncode}")
        try:
            response = requests.get(
                base_url + "/health/", timeout=5, allow_redirects=False
            )
            if response.status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise RuntimeError(
        f"gunicorn did not return 200 on {base_url}/health/ within {timeout} s"
    )


@contextmanager
def gunicorn(workers: int = 2, threads: int = 4, **env):
    """Serve the benchmark settings on 127.0.0.1; yield the base URL."""
    port = free_port()
    command = [
        PYTHON, "-m", "gunicorn", "meshline.wsgi:application",
        "--bind", f"{HOST}:{port}",
        "--workers", str(workers),
        "--worker-class", "gthread",
        "--threads", str(threads),
        "--log-level", "warning",
    ]  # fmt: skip
    process = subprocess.Popen(
        command, cwd=ROOT, env=child_env(**env), start_new_session=True
    )
    base_url = f"http://{HOST}:{port}"
    try:
        _wait_for_health(base_url, process, timeout=30)
        yield base_url
    finally:
        _stop(process, "gunicorn")


@contextmanager
def qcluster(**env):
    """Run one django-q2 cluster for the duration of the block."""
    process = subprocess.Popen(
        [PYTHON, "manage.py", "qcluster"],
        cwd=ROOT,
        env=child_env(**env),
        start_new_session=True,
    )
    try:
        time.sleep(0.5)
        if process.poll() is not None:
            raise RuntimeError(f"qcluster exited with code {process.returncode}")
        yield process
    finally:
        _stop(process, "qcluster", grace=20)


def percentile(values: list[float], fraction: float) -> float:
    """Return the nearest-rank percentile of ``values`` (fraction 0.5 is p50)."""
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    rank = max(1, min(len(ordered), math.ceil(fraction * len(ordered))))
    return ordered[rank - 1]


def heading(title: str) -> None:
    print(f"\n== {title} ==", flush=True)
