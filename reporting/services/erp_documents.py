"""Listing the ERP's sales documents of a window, to find ones Meshline never sent.

The adapter interface has no list call, so each adapter kind that can list
documents has a function here. Each yields ``(reference, number, currency,
total)`` pages in id order, so memory stays flat.

NOTE: the rest adapter has no listing: orphan documents are not looked for
on REST destinations.
"""

from syncflows.models import SandboxOrder

PAGE_SIZE = 500
TRYTON_SALE_STATES = ["confirmed", "processing", "done"]


def list_documents(adapter, since, until):
    """Yield pages of the documents created in ``[since, until)``."""
    kind = adapter.destination.adapter
    if kind == "sandbox":
        yield from _sandbox_pages(adapter.destination, since, until)
    elif kind == "tryton":
        yield from _tryton_pages(adapter, since, until)


def _sandbox_pages(destination, since, until):
    last_id = 0
    while True:
        rows = list(
            SandboxOrder.objects.filter(
                destination=destination,
                created_at__gte=since,
                created_at__lt=until,
                pk__gt=last_id,
            )
            .exclude(state=SandboxOrder.State.CANCELLED)
            .order_by("pk")
            .values_list("pk", "number", "currency", "total")[:PAGE_SIZE]
        )
        if not rows:
            return
        last_id = rows[-1][0]
        yield [
            (f"sandbox.order:{pk}", number, cur, total)
            for pk, number, cur, total in rows
        ]


def _tryton_pages(adapter, since, until):
    domain = [
        ["create_date", ">=", since],
        ["create_date", "<", until],
        ["state", "in", TRYTON_SALE_STATES],
    ]
    offset = 0
    while True:
        sales = adapter.rpc.model(
            "sale.sale",
            "search_read",
            domain,
            offset,
            PAGE_SIZE,
            [["id", "ASC"]],
            ["id", "number", "currency.code", "untaxed_amount"],
        )
        if not sales:
            return
        offset += len(sales)
        yield [
            (
                f"sale.sale:{sale['id']}",
                sale["number"] or "",
                (sale.get("currency.") or {}).get("code", ""),
                sale["untaxed_amount"],
            )
            for sale in sales
        ]
