"""Errors of CRM read-back clients, each with a reason code from REASONS."""


class CrmError(Exception):
    def __init__(
        self,
        reason_code: str,
        message: str,
        *,
        transient: bool = False,
        retry_after: float | None = None,
        status: int | None = None,
        crm_code: str = "",
    ):
        super().__init__(message)
        self.reason_code = reason_code
        self.message = message
        self.transient = transient
        self.retry_after = retry_after
        self.status = status
        self.crm_code = crm_code


class RecordNotFound(CrmError):
    """The CRM has no such record: it was deleted, or never existed."""

    def __init__(self, object_type: str, record_id: str, message: str = ""):
        super().__init__(
            "record_deleted",
            message or f"The CRM has no {object_type} {record_id}: it was deleted.",
            status=404,
        )
        self.object_type = object_type
        self.record_id = record_id
