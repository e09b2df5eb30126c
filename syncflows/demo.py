"""The demo configuration: connectors, triggers, briefs, lookups, routing and the
sandbox catalogue that turn the fixture deals into sandbox orders.

``load_demo_configuration`` is idempotent: it updates rows in place, so it can
run on every start of the demo.
"""

import json

from django.db import transaction

from meshline.fields import Unreadable

from syncflows.models import (
    Brief,
    BriefVersion,
    Connector,
    Destination,
    LookupRow,
    LookupTable,
    Route,
    SandboxCurrency,
    SandboxCustomer,
    SandboxProduct,
    Trigger,
)
from syncflows.services.configuration import save_trigger

# Development-only secrets, printed by load_demo. Never use them in production.
DEMO_SECRETS = {
    "hubspot": "demo-hubspot-client-secret",
    "salesforce_cdc": "demo-salesforce-relay-secret",
    "salesforce_outbound": None,
    "pipedrive": "demo-pipedrive-password",
    "generic": "whsec_demo_generic_secret",
}

DECIMAL_PATTERN = r"^-?[0-9]+(\.[0-9]+)?$"

ORDER_SCHEMA = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "type": "object",
    "required": ["crm_reference", "customer", "currency", "lines", "total"],
    "properties": {
        "crm_reference": {"type": "string", "minLength": 1},
        "customer": {
            "type": "object",
            "required": ["reference"],
            "properties": {
                "reference": {"type": "string", "minLength": 1},
                "name": {"type": ["string", "null"]},
            },
        },
        "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
        "close_date": {"type": ["string", "null"], "format": "date"},
        "customer_po": {"type": ["string", "null"]},
        "crm_amount": {"type": ["string", "null"], "pattern": DECIMAL_PATTERN},
        "total": {"type": "string", "pattern": DECIMAL_PATTERN},
        "lines": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["sku", "quantity", "unit_price", "line_total"],
                "properties": {
                    "sku": {"type": "string", "minLength": 1},
                    "description": {"type": ["string", "null"]},
                    "quantity": {"type": "string", "pattern": DECIMAL_PATTERN},
                    "unit_price": {"type": "string", "pattern": DECIMAL_PATTERN},
                    "discount_percent": {"type": ["string", "null"], "pattern": DECIMAL_PATTERN},
                    "discount_amount": {"type": ["string", "null"], "pattern": DECIMAL_PATTERN},
                    "line_total": {"type": "string", "pattern": DECIMAL_PATTERN},
                    "shipment": {"type": ["string", "null"]},
                },
            },
        },
    },
}

TOTAL_POSITIVE = {
    "name": "Order total is above zero",
    "expression": 'decimal.compare(command.total, "0") > 0',
    "expected": '"more than 0"',
    "actual": "command.total",
    "message": "A sales order must have a positive total; a credit belongs in a credit note.",
}

TOTAL_MATCHES_CRM = {
    "name": "Order total equals the CRM amount",
    "expression": "command.crm_amount == null || decimal.eq(command.total, command.crm_amount)",
    "expected": "command.crm_amount",
    "actual": "command.total",
    "message": "The order total does not equal the deal amount in the CRM.",
}


def _deal_line(amount: str, description: str) -> str:
    """Return a CEL list with one line for the whole deal amount, for deals without items."""
    return (
        f'[{{"sku": lookup("deal_products", "default"), "description": {description}, '
        f'"quantity": "1", "unit_price": {amount}}}]'
    )


HUBSPOT_MAPPING = {
    "crm_reference": "event.record_key",
    "customer": (
        '{"reference": has(record.associatedcompanyid) && record.associatedcompanyid != null'
        ' ? "hubspot:company:" + string(record.associatedcompanyid)'
        ' : "hubspot:deal:" + event.record_id,'
        ' "name": has(record.dealname) ? record.dealname : "HubSpot deal " + event.record_id}'
    ),
    "currency": (
        "has(record.deal_currency_code) && record.deal_currency_code != null"
        " ? record.deal_currency_code : connector.default_currency"
    ),
    "close_date": "has(record.closedate) ? record.closedate : null",
    "customer_po": "has(record.po_number) ? record.po_number : null",
    "crm_amount": "has(record.amount) ? record.amount : null",
    "lines": (
        "has(children.line_item) ? children.line_item.map(l, {"
        '"sku": lookup("sku_map", l.sku), "description": null, "quantity": string(l.quantity),'
        ' "unit_price": l.unit_price, "shipment": has(l.shipment) ? l.shipment : null})'
        " : " + _deal_line("record.amount", 'has(record.dealname) ? record.dealname : null')
    ),
}

SALESFORCE_MAPPING = {
    "crm_reference": "event.record_key",
    "customer": (
        '{"reference": connector.slug + ":Account:" + record.AccountId,'
        ' "name": has(record.Name) ? record.Name : null}'
    ),
    "currency": (
        "has(record.CurrencyIsoCode) && record.CurrencyIsoCode != null"
        " ? record.CurrencyIsoCode : connector.default_currency"
    ),
    "close_date": "has(record.CloseDate) ? record.CloseDate : null",
    "crm_amount": "has(record.Amount) ? record.Amount : null",
    "lines": (
        "has(children.SBQQ__Quote__c) ? children.SBQQ__Quote__c[0].lineItems.map(li, {"
        '"sku": lookup("sku_map", li.record.SBQQ__ProductCode__c),'
        ' "description": has(li.record.SBQQ__ProductName__c) ? li.record.SBQQ__ProductName__c : null,'
        ' "quantity": li.record.SBQQ__Quantity__c,'
        ' "unit_price": li.record.SBQQ__RegularPrice__c,'
        ' "discount_percent": has(li.record.SBQQ__Discount__c) ? li.record.SBQQ__Discount__c : null,'
        ' "discount_amount": has(li.record.SBQQ__AdditionalDiscountAmount__c)'
        " ? li.record.SBQQ__AdditionalDiscountAmount__c : null})"
        " : " + _deal_line("record.Amount", "has(record.Name) ? record.Name : null")
    ),
}

# A deal that reports line items waits for its CPQ quote instead of
# becoming a one-line order.
SALESFORCE_READY = (
    "!(has(record.HasOpportunityLineItem) && record.HasOpportunityLineItem == true)"
    " || has(children.SBQQ__Quote__c)"
)

PIPEDRIVE_MAPPING = {
    "crm_reference": "event.record_key",
    "customer": (
        '{"reference": has(record.org_id) && record.org_id != null'
        ' ? "pipedrive:organization:" + string(record.org_id) : "pipedrive:deal:" + event.record_id,'
        ' "name": has(record.org_name) ? record.org_name'
        ' : (has(record.title) ? record.title : "Pipedrive deal " + event.record_id)}'
    ),
    "currency": "record.currency",
    "close_date": (
        "has(record.local_won_date) && record.local_won_date != null ? record.local_won_date"
        " : (has(record.won_time) && record.won_time != null ? record.won_time.substring(0, 10) : null)"
    ),
    "crm_amount": "string(record.value)",
    "lines": _deal_line("string(record.value)", "has(record.title) ? record.title : null"),
}

GENERIC_MAPPING = {
    "crm_reference": "event.record_key",
    "customer": '{"reference": record.customer, "name": has(record.customer_name) ? record.customer_name : null}',
    "currency": "record.currency",
    "close_date": "has(record.close_date) ? record.close_date : null",
    "crm_amount": "has(record.total) ? record.total : null",
    "lines": (
        'record.line_items.map(l, {"sku": lookup("sku_map", l.sku), "quantity": string(l.quantity),'
        ' "unit_price": l.unit_price,'
        ' "discount_percent": has(l.discount_percent) ? l.discount_percent : null})'
    ),
}

CONNECTORS = [
    {
        "slug": "hubspot",
        "name": "HubSpot (demo portal 1234567)",
        "kind": "hubspot",
        "default_currency": "EUR",
        "business_unit": "emea",
        "region": "eu",
        "settings": {},
    },
    {
        "slug": "salesforce_cdc",
        "name": "Salesforce Change Data Capture (relay)",
        "kind": "salesforce_cdc",
        "default_currency": "EUR",
        "business_unit": "emea",
        "region": "eu",
        "settings": {},
    },
    {
        "slug": "salesforce_outbound",
        "name": "Salesforce Outbound Messages",
        "kind": "salesforce_outbound",
        "default_currency": "EUR",
        "business_unit": "emea",
        "region": "eu",
        "settings": {"organization_id": "00Dxx0000000001EAA"},
    },
    {
        "slug": "pipedrive",
        "name": "Pipedrive (example.pipedrive.com)",
        "kind": "pipedrive",
        "default_currency": "EUR",
        "business_unit": "emea",
        "region": "eu",
        "settings": {"username": "meshline"},
    },
    {
        # Salesforce CPQ quotes, relayed as QuoteModel JSON. They belong to the
        # same org as the Outbound Messages, so a quote joins its opportunity.
        "slug": "generic",
        "name": "Salesforce CPQ quotes (generic JSON)",
        "kind": "generic",
        "namespace": "salesforce_outbound",
        "default_currency": "EUR",
        "business_unit": "emea",
        "region": "eu",
        "settings": {
            "object_type": "SBQQ__Quote__c",
            "record_id_path": "record.Id",
            "full_state": True,
            "parents": {
                "SBQQ__Quote__c": {"type": "Opportunity", "id_path": "record.SBQQ__Opportunity2__c"}
            },
        },
    },
]

TRIGGERS = [
    ("hubspot-deal-won", "HubSpot deal closed won", "deal", "hubspot",
     'has(record.dealstage) && record.dealstage == "closedwon"'),
    ("salesforce-cdc-opportunity-won", "Salesforce opportunity closed won (CDC)", "Opportunity",
     "salesforce_cdc", 'has(record.StageName) && record.StageName == "Closed Won"'),
    ("salesforce-outbound-opportunity-won", "Salesforce opportunity closed won (Outbound)",
     "Opportunity", "salesforce_outbound",
     'has(record.StageName) && record.StageName == "Closed Won"'),
    ("pipedrive-deal-won", "Pipedrive deal won", "deal", "pipedrive",
     'has(record.status) && record.status == "won"'),
]  # fmt: skip

BRIEFS = [
    ("hubspot-won-deals", "HubSpot won deals to sales orders", ["hubspot-deal-won"],
     HUBSPOT_MAPPING, "", ["discounts"], True),
    ("salesforce-won-opportunities", "Salesforce won opportunities to sales orders",
     ["salesforce-cdc-opportunity-won", "salesforce-outbound-opportunity-won"],
     SALESFORCE_MAPPING, SALESFORCE_READY, ["CPQ", "discounts"], False),
    ("pipedrive-won-deals", "Pipedrive won deals to sales orders", ["pipedrive-deal-won"],
     PIPEDRIVE_MAPPING, "", ["subscription-change"], True),
]  # fmt: skip

SKUS = ["FAKE-SKU-100", "FAKE-SKU-200", "FAKE-SKU-SHIP", "FAKE-SKU-BOLT", "FAKE-SKU-DEAL", "P1"]
CUSTOMERS = [
    ("salesforce_cdc:Account:001xx0000000001AAA", "Example Widgets Ltd (FAKE)"),
    ("salesforce_outbound:Account:001xx0000000001AAA", "Example Widgets Ltd (FAKE)"),
    ("salesforce_outbound:Account:001xx0000000002AAA", "Sample Backpacks Inc (FAKE)"),
    ("pipedrive:organization:201", "Example Widgets Ltd (FAKE)"),
    ("hubspot:company:800000001", "Yllä Esimerkki Oy (FAKE)"),
]


@transaction.atomic
def load_demo_configuration(destination_adapter: str = "sandbox", destination_settings=None):
    """Create or update the demo configuration; return the connectors."""
    connectors = {}
    for spec in CONNECTORS:
        spec = dict(spec)
        slug = spec.pop("slug")
        connector, _ = Connector.objects.update_or_create(slug=slug, defaults=spec)
        secret = DEMO_SECRETS.get(slug)
        # A demo secret under an older key is unreadable; replace it.
        unreadable = isinstance(connector.secrets, Unreadable)
        if secret and (unreadable or secret not in connector.secret_list):
            connector.secrets = [secret]
            connector.save(update_fields=["secrets"])
        connectors[slug] = connector

    destination, _ = Destination.objects.update_or_create(
        slug="sandbox", defaults={"name": "Sandbox ERP", "adapter": "sandbox", "settings": {}}
    )
    for code in SKUS:
        SandboxProduct.objects.get_or_create(destination=destination, code=code, defaults={"name": code})
    for code in ("EUR", "USD", "JPY", "KWD"):
        SandboxCurrency.objects.get_or_create(destination=destination, code=code)
    for reference, name in CUSTOMERS:
        SandboxCustomer.objects.get_or_create(
            destination=destination, reference=reference, defaults={"name": name}
        )
    target = destination
    if destination_adapter != "sandbox":
        target, _ = Destination.objects.update_or_create(
            slug=destination_adapter,
            defaults={
                "name": f"{destination_adapter.title()} ERP",
                "adapter": destination_adapter,
                "settings": destination_settings or {},
            },
        )
    Route.objects.update_or_create(
        business_unit="", region="", object_type="", defaults={"destination": target, "mode": "live"}
    )

    sku_map, _ = LookupTable.objects.get_or_create(
        slug="sku_map", defaults={"name": "CRM SKU to ERP product code"}
    )
    for code in SKUS:
        LookupRow.objects.get_or_create(table=sku_map, key=code, defaults={"value": code})
    deal_products, _ = LookupTable.objects.get_or_create(
        slug="deal_products", defaults={"name": "ERP product for deals without line items"}
    )
    LookupRow.objects.get_or_create(table=deal_products, key="default", defaults={"value": "FAKE-SKU-DEAL"})

    triggers = {}
    for slug, name, object_type, connector_slug, condition in TRIGGERS:
        trigger = Trigger.objects.filter(slug=slug).first() or Trigger(slug=slug)
        trigger.name, trigger.object_type, trigger.condition = name, object_type, condition
        trigger.connector = connectors[connector_slug]
        save_trigger(trigger)
        triggers[slug] = trigger

    for slug, name, trigger_slugs, mapping, ready, keywords, create_customers in BRIEFS:
        brief, _ = Brief.objects.update_or_create(
            slug=slug,
            defaults={
                "name": name,
                "intent": f"{name}: every won deal becomes exactly one confirmed sales order.",
                "acceptance_text": "The order total equals the deal amount in the CRM, to the cent.",
                "keywords": keywords,
                "create_missing_customers": create_customers,
            },
        )
        brief.triggers.set([triggers[t] for t in trigger_slugs])
        BriefVersion.objects.update_or_create(
            brief=brief,
            number=1,
            defaults={
                "state": BriefVersion.State.ACTIVE,
                "mapping": mapping,
                "command_schema": ORDER_SCHEMA,
                "acceptance": [TOTAL_POSITIVE, TOTAL_MATCHES_CRM],
                "ready_condition": ready,
            },
        )
    return connectors


def _pipedrive_won(deal_id: int, value: str, currency: str, when) -> dict:
    stamp = when.strftime("%Y-%m-%d %H:%M:%S")
    return {
        "meta": {
            "action": "updated",
            "object": "deal",
            "id": deal_id,
            "host": "example.pipedrive.com",
            "webhook_id": "111111",
            "timestamp_micro": int(when.timestamp() * 1_000_000),
            "v": 1,
        },
        "current": {
            "id": deal_id,
            "title": f"FAKE-Deal {deal_id}",
            "value": value,
            "currency": currency,
            "status": "won",
            "org_id": 201,
            "org_name": "Example Widgets Ltd (FAKE)",
            "local_won_date": when.date().isoformat(),
            "update_time": stamp,
        },
        "previous": {"id": deal_id, "status": "open"},
        "event": "updated.deal",
        "retry": 0,
    }


def _hubspot_won(deal_id: int, amount: str, currency: str, when_ms: int) -> list:
    base = {"subscriptionId": 200001, "portalId": 1234567, "appId": 300001, "attemptNumber": 0}
    props = [("amount", amount), ("deal_currency_code", currency), ("dealname", f"FAKE-Deal {deal_id}"), ("dealstage", "closedwon")]
    return [
        {
            **base,
            "eventId": deal_id * 10 + index,
            "occurredAt": when_ms + index,
            "subscriptionType": "deal.propertyChange",
            "objectId": deal_id,
            "propertyName": name,
            "propertyValue": value,
            "changeSource": "CRM_UI",
        }
        for index, (name, value) in enumerate(props)
    ]


def _cpq_quote(opportunity_id: str, product_code: str) -> dict:
    return {
        "record": {
            "attributes": {"type": "SBQQ__Quote__c"},
            "Id": f"a0pxx{opportunity_id[-8:]}",
            "CurrencyIsoCode": "EUR",
            "SBQQ__Primary__c": True,
            "SBQQ__Opportunity2__c": opportunity_id,
        },
        "lineItems": [
            {"key": 1, "record": {"SBQQ__ProductCode__c": "FAKE-SKU-100", "SBQQ__Quantity__c": "2", "SBQQ__RegularPrice__c": "500.00", "SBQQ__Discount__c": None}},
            {"key": 2, "record": {"SBQQ__ProductCode__c": product_code, "SBQQ__Quantity__c": "1", "SBQQ__RegularPrice__c": "234.56", "SBQQ__Discount__c": None}},
        ],
    }  # fmt: skip


def _outbound_won(opportunity_id: str) -> bytes:
    return f"""<?xml version="1.0" encoding="UTF-8"?>
<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">
 <soapenv:Body>
  <notifications xmlns="http://soap.sforce.com/2005/09/outbound">
   <OrganizationId>00Dxx0000000001EAA</OrganizationId>
   <ActionId>04kxx0000000001AAA</ActionId>
   <Notification>
    <Id>04lxx{opportunity_id[-10:]}</Id>
    <sObject xsi:type="sf:Opportunity" xmlns:sf="urn:sobject.enterprise.soap.sforce.com">
     <sf:Id>{opportunity_id}</sf:Id>
     <sf:AccountId>001xx0000000001AAA</sf:AccountId>
     <sf:Amount>1234.56</sf:Amount>
     <sf:CloseDate>2026-11-30</sf:CloseDate>
     <sf:CurrencyIsoCode>EUR</sf:CurrencyIsoCode>
     <sf:HasOpportunityLineItem>true</sf:HasOpportunityLineItem>
     <sf:LastModifiedDate>2026-11-30T10:00:00.000Z</sf:LastModifiedDate>
     <sf:Name>FAKE-Deal quoted {opportunity_id[-4:]}</sf:Name>
     <sf:StageName>Closed Won</sf:StageName>
    </sObject>
   </Notification>
  </notifications>
 </soapenv:Body>
</soapenv:Envelope>""".encode()


def demo_deliveries(count: int = 40):
    """Yield ``(connector_slug, body)`` pairs of synthetic deliveries in the CRMs'
    own formats: won deals that become orders, plus a few that land in
    exception lanes (a currency the ERP does not accept, an unmapped SKU)."""
    import random
    from datetime import UTC, datetime, timedelta

    rng = random.Random(7)
    start = datetime(2026, 11, 1, 9, 0, tzinfo=UTC)
    for index in range(count):
        when = start + timedelta(hours=index * 7)
        amount = f"{rng.randint(100, 9000)}.{rng.randint(0, 99):02d}"
        if index % 2:
            yield "pipedrive", json.dumps(_pipedrive_won(1000 + index, amount, "EUR", when)).encode()
        else:
            currency = "GBP" if index % 10 == 4 else rng.choice(["EUR", "EUR", "USD"])
            body = _hubspot_won(910000000 + index, amount, currency, int(when.timestamp() * 1000))
            yield "hubspot", json.dumps(body).encode()
    for index, code in enumerate(["FAKE-SKU-200", "FAKE-SKU-404"]):
        opportunity = f"006xx00000000{index + 3:02d}AAA"
        yield "salesforce_outbound", _outbound_won(opportunity)
        yield "generic", json.dumps(_cpq_quote(opportunity, code)).encode()


def load_demo_deliveries(count: int = 40) -> dict:
    """Feed the synthetic deliveries through the receive path; return a tally."""
    from django.utils import timezone
    from django.utils.datastructures import CaseInsensitiveMapping

    from syncflows.connectors import DeliveryRequest
    from syncflows.services.receive import receive

    connectors = {c.slug: c for c in Connector.objects.all()}
    tally: dict[str, int] = {}
    for slug, body in demo_deliveries(count):
        request = DeliveryRequest(
            method="POST",
            url=f"file://demo/{slug}",
            headers=CaseInsensitiveMapping({"Content-Type": "application/json"}),
            body=body,
            received_at=timezone.now(),
            source="file",
            verified=True,
        )
        result = receive(connectors[slug], request)
        tally[result.status] = tally.get(result.status, 0) + 1
    return tally
