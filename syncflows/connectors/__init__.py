"""Connector kinds by name. Each module registers one ConnectorKind."""

import threading

from syncflows.connectors.base import (
    ConnectorKind,
    DeliveryRejected,
    DeliveryRequest,
    ParsedEvent,
    ParseError,
)

_KINDS: dict[str, ConnectorKind] = {}
_loaded = False
_load_lock = threading.Lock()


def register(kind: ConnectorKind) -> ConnectorKind:
    _KINDS[kind.kind] = kind
    return kind


def get_kind(name: str) -> ConnectorKind:
    if not _loaded:
        load_builtin_kinds()
    try:
        return _KINDS[name]
    except KeyError:
        raise LookupError(f"No connector kind is named {name!r}.") from None


def load_builtin_kinds() -> None:
    """Import every built-in kind once; called from the app's ready().

    The flag is set only after all imports, so that a thread never sees a
    half-filled registry (one kind registered, another still importing)."""
    global _loaded
    with _load_lock:
        if not _loaded:
            _import_builtin_kinds()
            _loaded = True


def _import_builtin_kinds():
    from syncflows.connectors import (  # noqa: F401
        generic,
        hubspot,
        pipedrive,
        salesforce_cdc,
        salesforce_outbound,
    )


__all__ = [
    "ConnectorKind",
    "DeliveryRejected",
    "DeliveryRequest",
    "ParseError",
    "ParsedEvent",
    "get_kind",
    "register",
]
