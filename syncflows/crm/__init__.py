"""Clients that read a CRM record and its line items back from the CRM's API."""

from syncflows.crm.base import (
    ChildRecord,
    CrmClient,
    CrmError,
    ReadRequest,
    ReadResult,
    RecordNotFound,
)


def get_client(access, **options) -> CrmClient:
    """Return the client for ``access.crm`` (a ConnectorApiAccess row)."""
    from syncflows.crm.hubspot import HubSpotClient
    from syncflows.crm.pipedrive import PipedriveClient
    from syncflows.crm.salesforce import SalesforceClient

    classes = {
        "hubspot": HubSpotClient,
        "salesforce": SalesforceClient,
        "pipedrive": PipedriveClient,
    }
    try:
        client_class = classes[access.crm]
    except KeyError:
        raise CrmError(
            "crm_unavailable",
            f"Connector API access {access.pk} names CRM {access.crm!r}; "
            f"expected one of {', '.join(classes)}.",
        ) from None
    return client_class(access, **options)


__all__ = [
    "ChildRecord",
    "CrmClient",
    "CrmError",
    "ReadRequest",
    "ReadResult",
    "RecordNotFound",
    "get_client",
]
