from reporting.models.drift import DeclaredSchema, DriftFinding, ObservedField
from reporting.models.reconciliation import (
    ErpInvoiceSnapshot,
    ReconciliationItem,
    ReconciliationRun,
)

__all__ = [
    "DeclaredSchema",
    "DriftFinding",
    "ErpInvoiceSnapshot",
    "ObservedField",
    "ReconciliationItem",
    "ReconciliationRun",
]
