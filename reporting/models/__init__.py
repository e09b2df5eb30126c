from reporting.models.drift import DeclaredSchema, DriftFinding, ObservedField
from reporting.models.reconciliation import (
    ErpInvoiceSnapshot,
    ReconciliationItem,
    ReconciliationRun,
)
from reporting.models.summary import (
    CashSummary,
    CommandFact,
    InvoiceSummary,
    RevenueSummary,
    SummaryWatermark,
    SyncFact,
    SyncSummary,
)

__all__ = [
    "CashSummary",
    "CommandFact",
    "DeclaredSchema",
    "DriftFinding",
    "ErpInvoiceSnapshot",
    "InvoiceSummary",
    "ObservedField",
    "ReconciliationItem",
    "ReconciliationRun",
    "RevenueSummary",
    "SummaryWatermark",
    "SyncFact",
    "SyncSummary",
]
