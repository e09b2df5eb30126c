"""The sandbox ERP adapter: real validation rules, writes only to its own tables.

Every write runs in its own transaction, committed before the dispatcher
records the outcome, the way a remote ERP commits before its answer can be
lost. So ``find_existing`` after a crash finds the order, exactly as it would
in a real ERP.
"""

from decimal import Decimal

from django.db import IntegrityError, transaction

from meshline import money
from syncflows.adapters.base import Adapter, AdapterError, ExecutionResult, InvoiceInfo
from syncflows.models import (
    SandboxCurrency,
    SandboxCustomer,
    SandboxOrder,
    SandboxProduct,
)


class SandboxAdapter(Adapter):
    def _check(self, command):
        payload = command.payload
        if command.command_type != "sales_order.create":
            raise AdapterError(
                "erp_rejected",
                f"The sandbox ERP does not accept {command.command_type!r} commands.",
            )
        destination = self.destination
        currency = payload.get("currency")
        if not SandboxCurrency.objects.filter(
            destination=destination, code=currency
        ).exists():
            raise AdapterError(
                "master_data_missing",
                f"The currency {currency!r} is not enabled in {destination.name}. Enable it in "
                "the ERP or correct the deal's currency; it was not booked in another currency.",
                detail={"currency": currency},
            )
        customer_ref = (payload.get("customer") or {}).get("reference")
        customer = SandboxCustomer.objects.filter(
            destination=destination, reference=customer_ref
        ).first()
        if customer is None and not command.options.get("create_missing_customers"):
            raise AdapterError(
                "master_data_missing",
                f"{destination.name} has no customer with the CRM reference {customer_ref!r}. "
                "Create or link the customer, then retry.",
                detail={"customer_reference": customer_ref},
            )
        skus = [line.get("sku") for line in payload.get("lines", [])]
        known = set(
            SandboxProduct.objects.filter(
                destination=destination, code__in=skus, is_active=True
            ).values_list("code", flat=True)
        )
        unknown = [sku for sku in skus if sku not in known]
        if unknown:
            raise AdapterError(
                "mapping_missing",
                f"{destination.name} has no active product {', '.join(map(repr, unknown))}. "
                "Map the CRM SKU to an ERP product in the SKU lookup table, then retry.",
                detail={"skus": unknown, "table": "sku_map"},
            )
        if not skus:
            raise AdapterError(
                "erp_rejected", "The order has no lines; the ERP rejects empty orders."
            )
        total = sum(
            (
                money.line_total(
                    line["quantity"],
                    line["unit_price"],
                    currency,
                    line.get("discount_percent"),
                    line.get("discount_amount"),
                )
                for line in payload["lines"]
            ),
            Decimal(0),
        )
        if money.quantize(total, currency) != money.to_decimal(payload.get("total")):
            raise AdapterError(
                "acceptance_failed",
                f"The ERP computes a total of {total} {currency}, but the command says "
                f"{payload.get('total')}.",
                detail={"expected": payload.get("total"), "actual": str(total)},
            )
        return customer, total

    def preflight(self, command):
        customer, total = self._check(command)
        # The dispatcher calls execute right after preflight; it reuses this
        # result instead of running the same checks again.
        self._preflight = (command.idempotency_key, command.payload, customer, total)
        return {
            "total": str(total),
            "currency": command.payload["currency"],
            "customer_known": customer is not None,
        }

    def execute(self, command):
        payload = command.payload
        checked = getattr(self, "_preflight", None)
        self._preflight = None
        with transaction.atomic():
            if checked and checked[0] == command.idempotency_key and checked[1] == payload:
                customer, total = checked[2], checked[3]
            else:
                customer, total = self._check(command)
            if customer is None:
                info = payload["customer"]
                customer, _ = SandboxCustomer.objects.get_or_create(
                    destination=self.destination,
                    reference=info["reference"],
                    defaults={"name": info.get("name") or info["reference"]},
                )
            try:
                with transaction.atomic():
                    order = SandboxOrder.objects.create(
                        destination=self.destination,
                        number="",
                        idempotency_key=command.idempotency_key,
                        crm_reference=payload.get("crm_reference", ""),
                        customer=customer,
                        currency=payload["currency"],
                        total=total,
                        lines=payload["lines"],
                        close_date=payload.get("close_date") or None,
                    )
            except IntegrityError:
                existing = self.find_existing(command.idempotency_key)
                if existing is not None:
                    return existing
                raise
            order.number = f"SO-{order.pk:06d}"
            order.invoice_number = f"INV-{order.pk:06d}"
            order.invoice_total = total
            order.save(update_fields=["number", "invoice_number", "invoice_total"])
        return self._result(order)

    def find_existing(self, idempotency_key):
        order = SandboxOrder.objects.filter(
            destination=self.destination, idempotency_key=idempotency_key
        ).first()
        return None if order is None else self._result(order)

    def _result(self, order):
        return ExecutionResult(
            reference=f"sandbox.order:{order.pk}",
            document_number=order.number,
            data={
                "invoice_number": order.invoice_number,
                "total": str(order.total),
                "currency": order.currency,
            },
        )

    def _order(self, reference):
        pk = _order_pk(reference)
        if pk is None:
            return None
        return SandboxOrder.objects.filter(destination=self.destination, pk=pk).first()

    def compensate(self, result):
        order = self._order(result.get("reference", ""))
        if order is None:
            raise AdapterError(
                "erp_rejected",
                f"No sandbox order {result.get('reference')!r} to reverse.",
            )
        if order.state == SandboxOrder.State.CANCELLED:
            return {
                "action": "none",
                "message": f"{order.number} was already cancelled.",
            }
        order.state = SandboxOrder.State.CANCELLED
        order.save(update_fields=["state"])
        return {"action": "cancelled", "message": f"{order.number} cancelled."}

    def fetch_invoice(self, reference):
        return self.fetch_invoices([reference])[reference]

    def fetch_invoices(self, references):
        """Return the invoice of each order reference, read in one query."""
        pks = {reference: _order_pk(reference) for reference in references}
        rows = SandboxOrder.objects.filter(
            destination=self.destination,
            pk__in=[pk for pk in pks.values() if pk is not None],
        ).values_list(
            "pk", "invoice_number", "state", "currency", "invoice_total", "paid_on"
        )
        orders = {row[0]: row for row in rows}
        return {
            reference: _invoice(*orders[pk]) if pk in orders else None
            for reference, pk in pks.items()
        }


def _order_pk(reference) -> int | None:
    try:
        return int(str(reference).rsplit(":", 1)[-1])
    except ValueError:
        return None


def _invoice(pk, number, state, currency, total, paid_on) -> InvoiceInfo | None:
    if not number:
        return None
    if state == SandboxOrder.State.CANCELLED:
        invoice_state = "cancelled"
    else:
        invoice_state = "paid" if paid_on else "posted"
    return InvoiceInfo(
        reference=f"sandbox.invoice:{pk}",
        number=number,
        state=invoice_state,
        currency=currency,
        total=str(total),
        paid_on=paid_on.isoformat() if paid_on else None,
    )
