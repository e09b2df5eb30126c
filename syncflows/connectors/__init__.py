"""Connector kinds by name. Each module registers one ConnectorKind."""

from syncflows.connectors.base import (
    ConnectorKind,
    DeliveryRejected,
    DeliveryRequest,
    ParsedEvent,
    ParseError,
)

_KINDS: dict[str, ConnectorKind] = {}


def register(kind: ConnectorKind) -> ConnectorKind:
    _KINDS[kind.kind] = kind
    return kind


def get_kind(name: str) -> ConnectorKind:
    if not _KINDS:
        _load_builtin_kinds()
    try:
        return _KINDS[name]
    except KeyError:
        raise LookupError(f"No connector kind is named {name!r}.") from None


def _load_builtin_kinds():
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
