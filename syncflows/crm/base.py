"""The interface every CRM read-back client implements, and its result types.

A client reads one record, the fields a brief asks for, and its associations
(line items, quotes, the company). It raises CrmError with a reason code from
``syncflows.adapters.base.REASONS``, transient or not, so that the pipeline
can retry later or open an exception case.
"""

from dataclasses import dataclass, field

from syncflows.crm.errors import CrmError, RecordNotFound
from syncflows.crm.http import Transport

__all__ = ["CrmError", "RecordNotFound"]


@dataclass(frozen=True)
class ReadRequest:
    """What a brief's ``read_back`` asks for.

    ``associations`` uses the CRM's own names, for example ``line_items`` and
    ``companies`` in HubSpot, ``OpportunityLineItems``, ``Account`` and
    ``quotes`` in Salesforce, ``products`` in Pipedrive.
    """

    properties: tuple[str, ...] = ()
    associations: tuple[str, ...] = ()
    child_properties: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, value: dict) -> "ReadRequest":
        value = value or {}
        return cls(
            properties=tuple(value.get("properties") or ()),
            associations=tuple(value.get("associations") or ()),
            child_properties=dict(value.get("child_properties") or {}),
        )


@dataclass
class ChildRecord:
    object_type: str
    record_id: str
    fields: dict


@dataclass
class ReadResult:
    """One record as the CRM returned it.

    ``record_id`` is the id the CRM answered with. It differs from the id
    asked for when the CRM followed a merge to the surviving record.
    ``related`` holds associated records that are not children, such as the
    company, by field name; ``children`` become child source records.
    """

    object_type: str
    record_id: str
    fields: dict
    children: list[ChildRecord] = field(default_factory=list)
    related: dict = field(default_factory=dict)
    # The object types whose whole list of children was read, so that a stored
    # child missing from the list was removed in the CRM.
    complete_child_types: set = field(default_factory=set)


class CrmClient:
    crm = ""

    def __init__(self, access, *, transport: Transport | None = None):
        self.access = access
        self.transport = transport or Transport(
            access, self.auth_for(access), self.classify
        )

    def read(
        self, object_type: str, record_id: str, request: ReadRequest
    ) -> ReadResult:
        raise NotImplementedError

    def auth_for(self, access):
        raise NotImplementedError

    def classify(self, status: int, body, headers) -> CrmError:
        """Map an error response to a CrmError."""
        raise NotImplementedError

    @property
    def stats(self) -> dict:
        return self.transport.stats

    def close(self) -> None:
        self.transport.close()
