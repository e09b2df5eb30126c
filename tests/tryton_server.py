"""A real trytond server for tests, on a copy of a cached SQLite database.

Building the database (``setup_tryton``) takes about 25 s, so it is built once
per machine into ``var/tryton/cache/`` under a name keyed by the set-up
script's hash and the trytond version. Each test session copies that file
(milliseconds) and starts its own ``trytond`` on a free 127.0.0.1 port.
"""

import fcntl
import logging
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from syncflows.management.commands.setup_tryton import (
    ADMIN_LOGIN,
    TRYTON_DIR,
    TrytonDatabase,
    prepare_database,
    setup_script_version,
    write_config,
)

logger = logging.getLogger(__name__)

CACHE_DIR = TRYTON_DIR / "cache"
DATABASE_NAME = "meshline"
START_TIMEOUT = 60  # seconds; trytond responded about 1 s after start on 2 cores


def _cache_key() -> str:
    import trytond

    return f"{setup_script_version()}-{trytond.__version__}"


def cached_database() -> tuple[Path, Path]:
    """Return the cached prepared SQLite file and its admin password file.

    The first caller on a machine builds them; a file lock makes parallel
    test sessions wait for that build instead of starting their own.
    """
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    key = _cache_key()
    database = CACHE_DIR / f"meshline-{key}.sqlite"
    password = CACHE_DIR / f"meshline-{key}.password"
    with open(CACHE_DIR / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not database.exists():
            _build(database, password, key)
    return database, password


def _build(database: Path, password: Path, key: str) -> None:
    started = time.monotonic()
    password.write_text(secrets.token_urlsafe(18) + "\n")
    build_name = f"build-{key}"
    build_file = CACHE_DIR / f"{build_name}.sqlite"
    prepare_database(
        f"sqlite:///{build_file}",
        CACHE_DIR / f"{build_name}.conf",
        force=True,
        password_file=password,
        log=logger.info,
    )
    build_file.rename(database)
    (CACHE_DIR / f"{build_name}.conf").unlink()
    # Databases built by earlier versions of the set-up script are never used again.
    for stale in [*CACHE_DIR.glob("meshline-*"), *CACHE_DIR.glob("build-*")]:
        if key not in stale.name:
            stale.unlink()
    logger.info(
        "Built the cached Tryton database in %.1f s", time.monotonic() - started
    )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TrytonServer:
    """A trytond process serving a private copy of the cached database."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        source, password_file = cached_database()
        shutil.copyfile(source, self.workdir / f"{DATABASE_NAME}.sqlite")
        self.database = DATABASE_NAME
        self.login = ADMIN_LOGIN
        self.password = password_file.read_text().strip()
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = self.workdir / "trytond.conf"
        write_config(
            self.config,
            TrytonDatabase(
                uri="sqlite://", name=DATABASE_NAME, sqlite_dir=self.workdir
            ),
            f"127.0.0.1:{self.port}",
        )
        self.log_path = self.workdir / "trytond.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        trytond = Path(sys.executable).parent / "trytond"
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [str(trytond), "-c", str(self.config), "-d", self.database],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self._wait_until_answering()

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def kill(self) -> None:
        """Stop the server at once, as a crash would."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def freeze(self) -> None:
        """Pause the process (SIGSTOP): connections are accepted but get no response."""
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.process.send_signal(signal.SIGCONT)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _wait_until_answering(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        body = {"id": 0, "method": "common.server.version", "params": []}
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"trytond exited with code {self.process.returncode}; "
                    f"see {self.log_path}"
                )
            try:
                requests.post(f"{self.url}/{self.database}/rpc/", json=body, timeout=2)
                return
            except requests.ConnectionError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"trytond did not answer on {self.url} within {START_TIMEOUT} s; "
            f"see {self.log_path}"
        )
