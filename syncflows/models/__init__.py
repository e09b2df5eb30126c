from syncflows.models.briefs import Brief, BriefVersion
from syncflows.models.commands import Command, SyncRun
from syncflows.models.connectors import Connector
from syncflows.models.events import Delivery, InboundEvent
from syncflows.models.ledger import LedgerEntry
from syncflows.models.lookups import LookupRow, LookupTable
from syncflows.models.records import RecordAlias, RecordChange, SourceRecord
from syncflows.models.routing import Destination, Route
from syncflows.models.sandbox import (
    SandboxCurrency,
    SandboxCustomer,
    SandboxOrder,
    SandboxProduct,
)
from syncflows.models.triggers import Trigger, TriggerVersion
from syncflows.models.lifecycle import (  # noqa: E402 (after the models it references)
    Approval,
    BriefAudit,
    ShadowDiff,
    ShadowResult,
    SyntheticResult,
    SyntheticRun,
    SyntheticTest,
    TriggerChange,
)

__all__ = [
    "Brief",
    "BriefVersion",
    "Command",
    "Connector",
    "Delivery",
    "Destination",
    "InboundEvent",
    "LedgerEntry",
    "LookupRow",
    "LookupTable",
    "RecordAlias",
    "RecordChange",
    "Route",
    "SandboxCurrency",
    "SandboxCustomer",
    "SandboxOrder",
    "SandboxProduct",
    "SourceRecord",
    "SyncRun",
    "Trigger",
    "TriggerVersion",
    "Approval",
    "BriefAudit",
    "ShadowDiff",
    "ShadowResult",
    "SyntheticResult",
    "SyntheticRun",
    "SyntheticTest",
    "TriggerChange",
]

from syncflows.models.crm import (  # noqa: E402
    ConnectorApiAccess,
    ConnectorHealth,
    CrmPace,
)

__all__ += ["ConnectorApiAccess", "ConnectorHealth", "CrmPace"]
