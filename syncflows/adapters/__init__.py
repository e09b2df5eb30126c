from syncflows.adapters.base import (
    REASONS,
    Adapter,
    AdapterError,
    CommandData,
    ExecutionResult,
    InvoiceInfo,
    Outcome,
)


def get_adapter(destination) -> Adapter:
    """Build the adapter for a Destination row."""
    if destination.adapter == "sandbox":
        from syncflows.adapters.sandbox import SandboxAdapter

        return SandboxAdapter(destination)
    if destination.adapter == "tryton":
        from syncflows.adapters.tryton import TrytonAdapter

        return TrytonAdapter(destination)
    if destination.adapter == "rest":
        from syncflows.adapters.rest import RestAdapter

        return RestAdapter(destination)
    raise LookupError(f"Destination {destination.slug} names an unknown adapter {destination.adapter!r}.")


__all__ = [
    "REASONS",
    "Adapter",
    "AdapterError",
    "CommandData",
    "ExecutionResult",
    "InvoiceInfo",
    "Outcome",
    "get_adapter",
]
