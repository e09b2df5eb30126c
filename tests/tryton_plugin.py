"""The ``tryton_server`` fixture: one real trytond per test session.

Register it with ``pytest_plugins = ["tests.tryton_plugin"]`` in the root
conftest. Tests that use it are marked ``tryton``.
"""

import logging
import time

import pytest

from tests.tryton_server import TrytonServer

logger = logging.getLogger(__name__)


@pytest.fixture(scope="module")
def tryton_server(tmp_path_factory):
    """Yield a started TrytonServer (``url``, ``database``, ``login``, ``password``).

    Each test module gets its own copy of the prepared database, so sales that
    one module creates never meet another module's idempotency keys or
    reconciliation window. A copy takes milliseconds and a start about 1 s."""
    started = time.monotonic()
    server = TrytonServer(tmp_path_factory.mktemp("tryton"))
    prepared = time.monotonic()
    server.start()
    logger.info(
        "Tryton test server on %s: database ready in %.1f s, answering after %.1f s",
        server.url,
        prepared - started,
        time.monotonic() - prepared,
    )
    try:
        yield server
    finally:
        server.stop()
