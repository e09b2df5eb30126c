"""The adapter interface every ERP destination implements.

The dispatcher calls, in order: ``find_existing(key)`` so that a retry after a
lost answer never writes twice, then ``preflight(command)``, then
``execute(command)``. Every failure is raised as an AdapterError that says
whether it is transient (retried with backoff) or permanent (an exception case
with the reason code).
"""

from dataclasses import dataclass, field

# Reason codes, their plain-words titles and the suggested fix shown to users.
REASONS = {
    "schema_invalid": (
        "The command does not match its schema",
        "Correct the brief's mapping or the CRM data, then replay the event.",
    ),
    "mapping_missing": (
        "A value has no mapping",
        "Add the missing row to the lookup table, then retry.",
    ),
    "master_data_missing": (
        "The ERP does not know a customer, product or currency",
        "Create or link the record in the ERP, then retry.",
    ),
    "acceptance_failed": (
        "The command failed an acceptance check",
        "Compare the expected and actual values, correct the CRM deal or the brief, then replay.",
    ),
    "erp_rejected": (
        "The ERP rejected the document",
        "Read the ERP's message, correct the data it names, then retry.",
    ),
    "erp_unavailable": (
        "The ERP could not be reached",
        "Check that the ERP is running, then retry. Meshline already retried with backoff.",
    ),
    "rate_limited": (
        "The ERP asked Meshline to slow down",
        "Retry later, or lower the dispatch rate for this destination.",
    ),
    "auth_failed": (
        "Meshline could not log in to the ERP",
        "Update the destination's credentials in admin, then retry.",
    ),
    "drift_blocked": (
        "The CRM changed a field this brief uses",
        "Review the drift report, update the brief if needed, then release the held commands.",
    ),
    "idempotency_conflict": (
        "The deal changed after its ERP document was created",
        "Compare both versions; compensate and replay to replace the document, or dismiss.",
    ),
    "stale_event": (
        "An older change arrived after a newer one",
        "Nothing to do: the newer state was kept.",
    ),
    "reconciliation_mismatch": (
        "The ERP invoice does not match the CRM deal",
        "Compare the CRM amount and currency with the invoice; correct the invoice "
        "with a credit note or correct the deal, then dismiss.",
    ),
    "invoice_missing": (
        "The ERP has no invoice for a synced order",
        "Check whether the invoice was deleted or cancelled in the ERP; recreate it "
        "there, or compensate and replay the order.",
    ),
    "orphan_document": (
        "An ERP sales document has no CRM deal",
        "Find who created the document in the ERP; link it to a deal or cancel it.",
    ),
    "crm_unavailable": (
        "The CRM could not be reached to read the record back",
        "Check the connector health page. Meshline retries the read by itself; "
        "retry the case once the CRM answers again.",
    ),
    "record_deleted": (
        "A deal that was synced to the ERP was deleted in the CRM",
        "Decide whether the ERP order should be cancelled: compensate it, or dismiss the case.",
    ),
}


class AdapterError(Exception):
    def __init__(
        self,
        reason_code: str,
        message: str,
        *,
        transient: bool = False,
        retry_after: float | None = None,
        detail: dict | None = None,
    ):
        if reason_code not in REASONS:
            raise ValueError(f"Unknown reason code {reason_code!r}.")
        super().__init__(message)
        self.reason_code = reason_code
        self.message = message
        self.transient = transient
        self.retry_after = retry_after
        self.detail = detail or {}


@dataclass(frozen=True)
class CommandData:
    """What an adapter gets: the command without any database row."""

    idempotency_key: str
    command_type: str
    payload: dict
    mode: str = "live"
    options: dict = field(default_factory=dict)  # from the brief, e.g. create_missing_customers


@dataclass
class ExecutionResult:
    reference: str  # the ERP's id of the document, e.g. "sale.sale:42"
    document_number: str  # what people search for, e.g. "SO-0042"
    data: dict = field(default_factory=dict)  # invoice ids and numbers, totals


@dataclass
class InvoiceInfo:
    reference: str
    number: str
    state: str  # draft, posted, paid, cancelled
    currency: str
    total: str  # decimal string
    paid_on: str | None = None  # ISO date
    credited_total: str = "0"  # sum of credit notes against it, decimal string


@dataclass
class Outcome:
    """The result of running one command: the ERP document, or the preflight alone."""

    result: ExecutionResult | None
    preflight: dict | None
    found: bool = False  # the ERP already held a document with this key
    dry_run: bool = False


class Adapter:
    # Commands that one ``run_batch`` call may take. An adapter that writes a
    # batch at once sets it higher; the others run one command a thread.
    batch_size = 1

    def __init__(self, destination):
        self.destination = destination
        self.settings = destination.settings or {}

    def run(self, command: CommandData) -> Outcome:
        """Preflight a dry run; otherwise look for the document, then preflight
        and execute. Raise what the ERP raised."""
        if command.mode == "dry_run":
            return Outcome(None, self.preflight(command), dry_run=True)
        existing = self.find_existing(command.idempotency_key)
        if existing is not None:
            return Outcome(existing, None, found=True)
        preflight = self.preflight(command)
        return Outcome(self.execute(command), preflight)

    def run_batch(self, commands: list[CommandData]) -> list:
        """Run each command; return an Outcome or the raised exception for each,
        in order."""
        outcomes = []
        for command in commands:
            try:
                outcomes.append(self.run(command))
            except Exception as exc:  # classified by the dispatcher, never lost
                outcomes.append(exc)
        return outcomes

    def preflight(self, command: CommandData) -> dict:
        """Validate without writing; return computed totals. Raise AdapterError."""
        raise NotImplementedError

    def execute(self, command: CommandData) -> ExecutionResult:
        raise NotImplementedError

    def find_existing(self, idempotency_key: str) -> ExecutionResult | None:
        raise NotImplementedError

    def compensate(self, result: dict) -> dict:
        """Reverse the document described by a stored ExecutionResult; idempotent."""
        raise NotImplementedError

    def fetch_invoice(self, reference: str) -> InvoiceInfo | None:
        raise NotImplementedError

    def fetch_invoices(self, references: list[str]) -> dict[str, InvoiceInfo | None]:
        """Return ``fetch_invoice`` of each reference, keyed by reference.

        Adapters that can read many invoices in one request override this.
        """
        return {reference: self.fetch_invoice(reference) for reference in references}

    def classify(self, exc: Exception) -> AdapterError:
        """Map any error raised while talking to the ERP to an AdapterError."""
        if isinstance(exc, AdapterError):
            return exc
        return AdapterError(
            "erp_unavailable", f"Unexpected error: {exc}", transient=True
        )

    def close(self) -> None:
        """Release connections; called when a worker stops."""
