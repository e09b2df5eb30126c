"""Reading a record and its associations back from the CRM before mapping."""


def read_back(record, version, evaluator, rows) -> None:
    """Fetch what ``version.read_back`` asks for and update the evaluator's
    ``record`` and ``children``. Raises pipeline.RunFailed on a failure."""
    raise NotImplementedError("CRM read-back is not built yet.")
