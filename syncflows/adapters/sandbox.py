"""The sandbox ERP adapter: real validation rules, writes only to its own tables.

Every write runs in its own transaction (one for a batch), committed before
the dispatcher records the outcome, the way a remote ERP commits before its response can be
lost. So ``find_existing`` after a crash finds the order, exactly as it would
in a real ERP.
"""

from decimal import Decimal

from django.db import IntegrityError, connection, transaction

from meshline import money
from syncflows.adapters.base import Adapter, AdapterError, ExecutionResult, InvoiceInfo, Outcome
from syncflows.models import (
    SandboxCurrency,
    SandboxCustomer,
    SandboxOrder,
    SandboxProduct,
)


class Catalogue:
    """The sandbox's master data that a set of commands needs, read at once."""

    def __init__(self, destination, payloads):
        refs = {(payload.get("customer") or {}).get("reference") for payload in payloads}
        skus = {line.get("sku") for payload in payloads for line in _lines(payload)}
        self.currencies = set(
            SandboxCurrency.objects.filter(destination=destination).values_list("code", flat=True)
        )
        self.customers = {
            customer.reference: customer
            for customer in SandboxCustomer.objects.filter(
                destination=destination, reference__in=[ref for ref in refs if isinstance(ref, str)]
            )
        }
        self.products = set(
            SandboxProduct.objects.filter(
                destination=destination,
                code__in=[sku for sku in skus if isinstance(sku, str)],
                is_active=True,
            ).values_list("code", flat=True)
        )


def _lines(payload) -> list:
    lines = payload.get("lines")
    return [line for line in lines if isinstance(line, dict)] if isinstance(lines, list) else []


class SandboxAdapter(Adapter):
    batch_size = 100

    def _check(self, command, catalogue=None):
        payload = command.payload
        if command.command_type != "sales_order.create":
            raise AdapterError(
                "erp_rejected",
                f"The sandbox ERP does not accept {command.command_type!r} commands.",
            )
        destination = self.destination
        catalogue = catalogue or Catalogue(destination, [payload])
        currency = payload.get("currency")
        if currency not in catalogue.currencies:
            raise AdapterError(
                "master_data_missing",
                f"The currency {currency!r} is not enabled in {destination.name}. Enable it in "
                "the ERP or correct the deal's currency; it was not booked in another currency.",
                detail={"currency": currency},
            )
        customer_ref = (payload.get("customer") or {}).get("reference")
        customer = catalogue.customers.get(customer_ref)
        if customer is None and not command.options.get("create_missing_customers"):
            raise AdapterError(
                "master_data_missing",
                f"{destination.name} has no customer with the CRM reference {customer_ref!r}. "
                "Create or link the customer, then retry.",
                detail={"customer_reference": customer_ref},
            )
        skus = [line.get("sku") for line in payload.get("lines", [])]
        unknown = [sku for sku in skus if sku not in catalogue.products]
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

    @staticmethod
    def _preflight_result(command, customer, total) -> dict:
        return {
            "total": str(total),
            "currency": command.payload["currency"],
            "customer_known": customer is not None,
        }

    def preflight(self, command):
        customer, total = self._check(command)
        # The dispatcher calls execute right after preflight; it reuses this
        # result instead of running the same checks again.
        self._preflight = (command.idempotency_key, command.payload, customer, total)
        return self._preflight_result(command, customer, total)

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
                customer = self._new_customer(payload)
            try:
                with transaction.atomic():
                    order = self._new_order(command, customer, total)
                    order.save()
            except IntegrityError:
                existing = self.find_existing(command.idempotency_key)
                if existing is not None:
                    return existing
                raise
            self._number([order])
        return self._result(order)

    def run_batch(self, commands):
        """Check every command against one read of the catalogue and write the
        new orders with one insert, in one transaction."""
        outcomes: list = [None] * len(commands)
        live_keys = [command.idempotency_key for command in commands if command.mode != "dry_run"]
        existing = {
            order.idempotency_key: order
            for order in SandboxOrder.objects.filter(
                destination=self.destination, idempotency_key__in=live_keys
            )
        }
        catalogue = Catalogue(self.destination, [command.payload for command in commands])
        to_write = []
        for index, command in enumerate(commands):
            if command.mode != "dry_run" and command.idempotency_key in existing:
                order = existing[command.idempotency_key]
                outcomes[index] = Outcome(self._result(order), None, found=True)
                continue
            try:
                customer, total = self._check(command, catalogue)
            except Exception as exc:  # classified by the dispatcher, never lost
                outcomes[index] = exc
                continue
            preflight = self._preflight_result(command, customer, total)
            if command.mode == "dry_run":
                outcomes[index] = Outcome(None, preflight, dry_run=True)
            else:
                to_write.append((index, command, customer, total, preflight))
        if to_write:
            try:
                orders = self._write_orders(to_write)
            except IntegrityError:
                # Another writer stored one of these keys meanwhile: one by one,
                # each command finds its order or writes it.
                for index, command, *_rest in to_write:
                    outcomes[index] = super().run_batch([command])[0]
            else:
                for (index, _command, _customer, _total, preflight), order in zip(to_write, orders):
                    outcomes[index] = Outcome(self._result(order), preflight)
        return outcomes

    def _write_orders(self, to_write) -> list:
        with transaction.atomic():
            orders = []
            for _index, command, customer, total, _preflight in to_write:
                if customer is None:
                    customer = self._new_customer(command.payload)
                orders.append(self._new_order(command, customer, total))
            ids = _next_ids(len(orders))
            if ids is None:
                SandboxOrder.objects.bulk_create(orders)
                self._number(orders)
            else:
                # The numbers derive from the ids, taken first, so one insert
                # writes the orders whole.
                for order, pk in zip(orders, ids):
                    order.pk = pk
                    _set_numbers(order)
                SandboxOrder.objects.bulk_create(orders)
        return orders

    def _new_customer(self, payload):
        info = payload["customer"]
        customer, _ = SandboxCustomer.objects.get_or_create(
            destination=self.destination,
            reference=info["reference"],
            defaults={"name": info.get("name") or info["reference"]},
        )
        return customer

    def _new_order(self, command, customer, total):
        payload = command.payload
        return SandboxOrder(
            destination=self.destination,
            # Unique until _number replaces it, as the column requires.
            number=f"new-{command.idempotency_key[:28]}",
            idempotency_key=command.idempotency_key,
            crm_reference=payload.get("crm_reference", ""),
            customer=customer,
            currency=payload["currency"],
            total=total,
            lines=payload["lines"],
            close_date=payload.get("close_date") or None,
        )

    @staticmethod
    def _number(orders) -> None:
        """Give saved orders their number and invoice, derived from their ids."""
        for order in orders:
            _set_numbers(order)
        SandboxOrder.objects.bulk_update(orders, ["number", "invoice_number", "invoice_total"])


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



def _set_numbers(order) -> None:
    order.number = f"SO-{order.pk:06d}"
    order.invoice_number = f"INV-{order.pk:06d}"
    order.invoice_total = order.total


def _next_ids(count: int) -> list[int] | None:
    """Take ``count`` order ids from the table's sequence on PostgreSQL; None
    elsewhere."""
    if connection.vendor != "postgresql":
        return None
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT nextval(pg_get_serial_sequence(%s, 'id')) FROM generate_series(1, %s)",
            [SandboxOrder._meta.db_table, count],
        )
        return [row[0] for row in cursor.fetchall()]
