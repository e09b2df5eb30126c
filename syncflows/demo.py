"""The demo configuration: connectors, triggers, briefs, lookups, routing and the
sandbox catalogue that turn the fixture deals into sandbox orders.

``load_demo_configuration`` is idempotent: it updates rows in place, so it can
run on every start of the demo.
"""

from django.db import transaction

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

TOTAL_MATCHES_CRM = {
    "name": "Order total equals the CRM amount",
    "expression": "command.crm_amount == null || decimal.eq(command.total, command.crm_amount)",
    "expected": "command.crm_amount",
    "actual": "command.total",
    "message": "The order total does not equal the deal amount in the CRM.",
}


def _deal_line(amount: str, description: str) -> str:
    """A CEL list with one line for the whole deal amount, for deals without items."""
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

# A deal that says it has line items waits for its CPQ quote instead of
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
        if secret and secret not in connector.secret_list:
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
                "acceptance": [TOTAL_MATCHES_CRM],
                "ready_condition": ready,
            },
        )
    return connectors
