"""Finding the connector of an inbound delivery, with a short per-process cache.

The webhook endpoint looks up its connector on every request. A worker
process keeps each active connector for a few seconds, so a burst of
deliveries costs one query, not one each. Saving or deleting a connector
clears the cache of the process that saved it at once. Other processes read
the change within ``CACHE_SECONDS``, so a deactivated connector or a removed
secret may still accept deliveries for that long.
"""

import threading
import time

from django.db.models.signals import post_delete, post_save
from django.dispatch import receiver

from syncflows.models import Connector

CACHE_SECONDS = 5.0

_cache: dict[str, tuple[float, Connector]] = {}
_lock = threading.Lock()


def active_connector(slug: str) -> Connector | None:
    """Return the active connector named ``slug``, or None."""
    now = time.monotonic()
    with _lock:
        cached = _cache.get(slug)
    if cached is not None and now - cached[0] < CACHE_SECONDS:
        return cached[1]
    connector = Connector.objects.filter(slug=slug, is_active=True).first()
    with _lock:
        if connector is None:
            _cache.pop(slug, None)
        else:
            _cache[slug] = (now, connector)
    return connector


@receiver(post_save, sender=Connector)
@receiver(post_delete, sender=Connector)
def forget_connectors(**kwargs) -> None:
    with _lock:
        _cache.clear()
