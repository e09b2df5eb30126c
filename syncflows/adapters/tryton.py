"""The ``tryton`` destination: sales orders in Tryton 8.2 over JSON-RPC.

How a ``sales_order.create`` command maps onto Tryton:

- The customer is the ``party.party`` whose ``code`` equals the CRM reference
  (``hubspot:company:800000001``). Tryton keeps party codes unique, so two
  workers creating the same missing customer cannot make two parties.
- Each line's product is the ``product.product`` whose ``code`` is the SKU.
  Unit and taxes come from the read-only ``sale.line.on_change`` call, because
  RPC ``create`` does not fill derived values.
- ``sale.reference`` stores the idempotency key, ``sale.description`` the
  CRM reference, and ``sale.sale_date`` the close date unchanged. A command
  without a close date leaves it empty, and Tryton's ``confirm`` sets the
  company's current date.
- A discounted line is sent as the undiscounted line plus an explicit discount
  line (no product, the same taxes, a negative unit price). Tryton rounds unit
  prices to 4 digits, and rounding the discounted price first gives a wrong
  line total: 9950 x round(0.139 x 0.85, 4) = 1176.09 where 1175.59 is right.
- ``quote`` and ``confirm`` run in the same call sequence, and ``confirm``
  makes Tryton create the invoice. With ``post_invoices`` it is posted too.
"""

import json
import logging
import os
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import requests

from meshline.money import MoneyError, to_decimal
from syncflows.adapters.base import (
    Adapter,
    AdapterError,
    CommandData,
    ExecutionResult,
    InvoiceInfo,
)
from syncflows.adapters.tryton_rpc import TrytonRPC

logger = logging.getLogger(__name__)

SALE_FIELDS = [
    "number",
    "state",
    "reference",
    "currency",
    "untaxed_amount",
    "tax_amount",
    "total_amount",
    "invoices",
    "shipments",
]
INVOICE_FIELDS = [
    "number",
    "state",
    "type",
    "currency",
    "untaxed_amount",
    "tax_amount",
    "total_amount",
    "reconciled",
    "lines",
]
# Sale states after confirm. A sale still in draft or quotation was left
# half-done by an interrupted execute, which resumes it.
# NOTE: a compensated sale that was already processed stays "done" in Tryton,
# so find_existing still returns it; only a cancelled sale frees its key.
FINISHED_SALE_STATES = ("confirmed", "processing", "done")
DRAFT_INVOICE_STATES = ("draft", "validated")


@dataclass
class Currency:
    id: int
    code: str
    rounding: Decimal

    def round(self, amount: Decimal) -> Decimal:
        # Tryton's currency.round rounds half to even on the currency's rounding.
        return amount.quantize(self.rounding, rounding=ROUND_HALF_EVEN)

    def format(self, amount) -> str:
        return str(self.round(Decimal(amount or 0)))


@dataclass
class SalePlan:
    """The values of a sale to create, resolved against Tryton."""

    header: dict
    lines: list[dict]
    currency: Currency
    party_id: int | None
    party_created: bool = False
    expected_total: Decimal = Decimal(0)
    notes: list[str] = field(default_factory=list)


class TrytonAdapter(Adapter):
    def __init__(self, destination):
        super().__init__(destination)
        self._rpc: TrytonRPC | None = None
        self._currencies: dict[str, Currency] = {}
        self._unit_price_digits: int | None = None

    # Connection

    @property
    def rpc(self) -> TrytonRPC:
        if self._rpc is None:
            settings = self.settings
            missing = [
                name for name in ("url", "database", "login") if not settings.get(name)
            ]
            if missing:
                raise AdapterError(
                    "auth_failed",
                    f"The Tryton destination {self.destination.slug} has no "
                    f"{', '.join(missing)} in its settings.",
                )
            self._rpc = TrytonRPC(
                settings["url"],
                settings["database"],
                settings["login"],
                self._password(),
                timeout=float(settings.get("timeout", 30)),
            )
        return self._rpc

    def _password(self) -> str:
        settings = self.settings
        if settings.get("password_env"):
            value = os.environ.get(settings["password_env"])
            if value:
                return value
        if settings.get("password_file"):
            try:
                return Path(settings["password_file"]).read_text().strip()
            except OSError as exc:
                raise AdapterError(
                    "auth_failed",
                    f"The Tryton password file {settings['password_file']} of "
                    f"destination {self.destination.slug} could not be read: "
                    f"{exc.strerror}.",
                ) from exc
        password = (self.destination.credentials or {}).get("password")
        if not password:
            raise AdapterError(
                "auth_failed",
                f"The Tryton destination {self.destination.slug} has no password: "
                "set password_env or password_file in its settings, or a password "
                "in its credentials.",
            )
        return password

    def close(self) -> None:
        if self._rpc is not None:
            self._rpc.close()
            self._rpc = None

    def classify(self, exc: Exception) -> AdapterError:
        if isinstance(exc, AdapterError):
            return exc
        if isinstance(exc, requests.RequestException):
            return AdapterError(
                "erp_unavailable",
                f"Tryton could not be reached: {type(exc).__name__}.",
                transient=True,
            )
        if isinstance(exc, MoneyError):
            return AdapterError("schema_invalid", str(exc))
        return super().classify(exc)

    # The adapter interface

    def preflight(self, command: CommandData) -> dict:
        plan = self._plan(command, write=False)
        totals = self._check_totals(plan)
        return {
            "customer_id": plan.party_id,
            "customer_would_be_created": plan.party_id is None,
            "currency": plan.currency.code,
            "line_count": len(command.payload["lines"]),
            "tryton_line_count": len(plan.lines),
            **totals,
            "notes": plan.notes,
        }

    def execute(self, command: CommandData) -> ExecutionResult:
        key = command.idempotency_key
        unfinished = self._find_sale(key, FINISHED_SALE_STATES + ("draft", "quotation"))
        if unfinished and unfinished["state"] in FINISHED_SALE_STATES:
            logger.info("Tryton sale %s already carries key %s", unfinished["id"], key)
            return self._finish(unfinished["id"])
        if unfinished:
            sale_id = unfinished["id"]
            logger.warning(
                "Resuming Tryton sale %s left in %s", sale_id, unfinished["state"]
            )
        else:
            plan = self._plan(command, write=True)
            self._check_totals(plan)
            sale_id = self._create_sale(plan)
        self._confirm(sale_id, unfinished["state"] if unfinished else "draft")
        result = self._finish(sale_id)
        logger.info(
            "Created Tryton sale %s (%s) for key %s",
            sale_id,
            result.document_number,
            key,
        )
        return result

    def _finish(self, sale_id: int) -> ExecutionResult:
        """Post the draft invoices if post_invoices is set, then read the sale."""
        result = self._result(sale_id)
        drafts = [
            invoice_id
            for invoice_id, state in zip(
                result.data["invoice_ids"], result.data["invoice_states"], strict=True
            )
            if state in DRAFT_INVOICE_STATES
        ]
        if not (self.settings.get("post_invoices") and drafts):
            return result
        self.rpc.model("account.invoice", "post", drafts)
        logger.info("Posted Tryton invoices %s of sale %s", drafts, sale_id)
        return self._result(sale_id)

    def find_existing(self, idempotency_key: str) -> ExecutionResult | None:
        sale = self._find_sale(idempotency_key, FINISHED_SALE_STATES)
        return self._result(sale["id"]) if sale else None

    def compensate(self, result: dict) -> dict:
        sale_id = _parse_reference(result.get("reference", ""), "sale.sale")
        sale = self._read("sale.sale", [sale_id], SALE_FIELDS)
        if not sale:
            raise AdapterError(
                "master_data_missing",
                f"Tryton has no sale {sale_id} to compensate.",
                detail={"sale_id": sale_id},
            )
        return self._compensate_sale(sale[0])

    def fetch_invoice(self, reference: str) -> InvoiceInfo | None:
        """Return the sale's (or the invoice's) invoice; amounts are untaxed.

        ``total`` and ``credited_total`` are untaxed amounts, because the
        command total that reconciliation compares them with is untaxed.
        """
        return self.fetch_invoices([reference])[reference]

    def fetch_invoices(self, references: list[str]) -> dict[str, InvoiceInfo | None]:
        """Return the invoice of each reference, as ``fetch_invoice`` does.

        Any number of references takes at most four JSON-RPC requests, plus one per
        currency not seen before: the sales, their invoices, the credit note
        lines that point at those invoices' lines, and the credit notes.
        """
        invoice_ids = self._invoice_ids(references)
        wanted = sorted({pk for pk in invoice_ids.values() if pk is not None})
        invoices = {}
        if wanted:
            rows = self._search_read(
                "account.invoice", [["id", "in", wanted]], INVOICE_FIELDS
            )
            invoices = {row["id"]: row for row in rows}
        credited = self._credited_totals(list(invoices.values()))
        return {
            reference: (
                self._invoice_info(invoices[pk], credited[pk])
                if pk in invoices
                else None
            )
            for reference, pk in invoice_ids.items()
        }

    def _invoice_info(self, invoice: dict, credited: Decimal) -> InvoiceInfo:
        currency = self._currency_by_id(invoice["currency"])
        state = (
            "draft" if invoice["state"] in DRAFT_INVOICE_STATES else invoice["state"]
        )
        paid_on = invoice.get("reconciled") if invoice["state"] == "paid" else None
        return InvoiceInfo(
            reference=f"account.invoice:{invoice['id']}",
            number=invoice["number"] or "",
            state=state,
            currency=currency.code,
            total=currency.format(invoice["untaxed_amount"]),
            paid_on=paid_on.isoformat() if isinstance(paid_on, date) else None,
            credited_total=currency.format(credited),
        )

    def _credited_totals(self, invoices: list[dict]) -> dict[int, Decimal]:
        """Sum the untaxed credit notes of each invoice, as positive amounts.

        A credit note is an invoice, not cancelled, with a line whose origin
        is a line of the credited invoice.
        """
        credited = {invoice["id"]: Decimal(0) for invoice in invoices}
        origins = {
            f"account.invoice.line,{line_id}": invoice["id"]
            for invoice in invoices
            for line_id in invoice["lines"]
        }
        if not origins:
            return credited
        lines = self._search_read(
            "account.invoice.line",
            [["origin", "in", sorted(origins)], ["invoice.state", "!=", "cancelled"]],
            ["invoice", "origin"],
        )
        notes_of = defaultdict(set)
        for line in lines:
            notes_of[origins[line["origin"]]].add(line["invoice"])
        note_ids = sorted(set().union(*notes_of.values()))
        if not note_ids:
            return credited
        notes = self._read("account.invoice", note_ids, ["untaxed_amount"])
        amounts = {note["id"]: abs(note["untaxed_amount"]) for note in notes}
        for invoice_id, ids in notes_of.items():
            credited[invoice_id] = sum((amounts[pk] for pk in ids), Decimal(0))
        return credited

    # Reading

    def _search_read(self, model, domain, fields, limit=None, order=None):
        return self.rpc.model(model, "search_read", domain, 0, limit, order, fields)

    def _read(self, model, ids, fields):
        return self.rpc.model(model, "read", ids, fields)

    def _find_sale(self, key: str, states) -> dict | None:
        sales = self._search_read(
            "sale.sale",
            [["reference", "=", key], ["state", "in", list(states)]],
            ["id", "state"],
            limit=1,
            order=[["id", "ASC"]],
        )
        return sales[0] if sales else None

    def _result(self, sale_id: int) -> ExecutionResult:
        (sale,) = self._read("sale.sale", [sale_id], SALE_FIELDS)
        currency = self._currency_by_id(sale["currency"])
        invoices = self._read("account.invoice", sale["invoices"], ["number", "state"])
        invoices.sort(key=lambda invoice: invoice["id"])
        return ExecutionResult(
            reference=f"sale.sale:{sale_id}",
            document_number=sale["number"] or "",
            data={
                "sale_id": sale_id,
                "sale_number": sale["number"],
                "sale_state": sale["state"],
                "currency": currency.code,
                "invoice_ids": [invoice["id"] for invoice in invoices],
                "invoice_numbers": [invoice["number"] for invoice in invoices],
                "invoice_states": [invoice["state"] for invoice in invoices],
                "shipment_ids": sorted(sale["shipments"]),
                "untaxed_amount": currency.format(sale["untaxed_amount"]),
                "tax_amount": currency.format(sale["tax_amount"]),
                "total_amount": currency.format(sale["total_amount"]),
            },
        )

    def _currency(self, code: str) -> Currency:
        if code not in self._currencies:
            found = self._search_read(
                "currency.currency", [["code", "=", code]], ["id", "code", "rounding"]
            )
            if not found:
                raise AdapterError(
                    "master_data_missing",
                    f"Tryton has no currency {code}. Add {code} to Tryton's "
                    "currencies; the order was not booked in another currency.",
                    detail={"currency": code},
                )
            row = found[0]
            self._currencies[code] = Currency(row["id"], row["code"], row["rounding"])
        return self._currencies[code]

    def _currency_by_id(self, currency_id: int) -> Currency:
        for currency in self._currencies.values():
            if currency.id == currency_id:
                return currency
        (row,) = self._read("currency.currency", [currency_id], ["code", "rounding"])
        currency = Currency(currency_id, row["code"], row["rounding"])
        self._currencies[row["code"]] = currency
        return currency

    def _company_id(self) -> int:
        company = self.rpc.context.get("company")
        if not company:
            self.rpc.authenticate()
            company = self.rpc.context.get("company")
        if not company:
            raise AdapterError(
                "master_data_missing",
                f"The Tryton user {self.settings.get('login')!r} has no current "
                "company. Set the user's company in Tryton.",
            )
        return company

    # Planning a sale

    def _plan(self, command: CommandData, *, write: bool) -> SalePlan:
        if command.command_type != "sales_order.create":
            raise AdapterError(
                "schema_invalid",
                f"The tryton adapter does not handle {command.command_type!r} "
                "commands.",
            )
        try:
            return self._plan_sale(command, write)
        except MoneyError as exc:
            raise AdapterError("schema_invalid", str(exc)) from exc

    def _plan_sale(self, command: CommandData, write: bool) -> SalePlan:
        payload = command.payload
        lines = payload.get("lines") or []
        if not lines:
            raise AdapterError(
                "schema_invalid",
                "The sales order has no lines; map a deal without line items to a "
                "service product such as FAKE-SKU-DEAL.",
            )
        currency = self._currency(payload.get("currency") or "")
        products = self._products([line.get("sku") for line in lines])
        party_id, created = self._party(payload.get("customer") or {}, command, write)
        header = self._header(command, currency, party_id)
        plan = SalePlan(
            header=header,
            lines=[],
            currency=currency,
            party_id=party_id,
            party_created=created,
            expected_total=to_decimal(payload.get("total"), "order total"),
        )
        if party_id is None:
            plan.notes.append("The customer would be created on execute.")
        if header["sale_date"] is None:
            plan.notes.append("No close date: Tryton sets the date of confirmation.")
        defaults = {}
        for number, line in enumerate(lines, start=1):
            plan.lines += self._sale_lines(plan, line, number, products, defaults)
        return plan

    def _products(self, skus: list) -> dict[str, int]:
        if any(not sku for sku in skus):
            raise AdapterError(
                "mapping_missing", "A line has no SKU.", detail={"sku": None}
            )
        found = self._search_read(
            "product.product", [["code", "in", sorted(set(skus))]], ["id", "code"]
        )
        products = {row["code"]: row["id"] for row in found}
        missing = sorted(set(skus) - products.keys())
        if missing:
            raise AdapterError(
                "mapping_missing",
                f"Tryton has no product with SKU {', '.join(missing)}. Map the SKU "
                "to an existing Tryton product code in the SKU lookup table.",
                detail={"sku": missing[0], "skus": missing},
            )
        return products

    def _party(self, customer: dict, command: CommandData, write: bool):
        reference = customer.get("reference")
        if not reference:
            raise AdapterError(
                "master_data_missing", "The order names no customer reference."
            )
        found = self._search_read("party.party", [["code", "=", reference]], ["id"])
        if found:
            return found[0]["id"], False
        if not command.options.get("create_missing_customers"):
            raise AdapterError(
                "master_data_missing",
                f"Tryton has no customer with code {reference}. Create the party "
                "with that code in Tryton, or allow creating missing customers "
                "in the brief.",
                detail={"customer_reference": reference},
            )
        if not write:
            return None, False
        return self._create_party(reference, customer.get("name") or reference), True

    def _create_party(self, reference: str, name: str) -> int:
        values = {"name": name, "code": reference, "addresses": [["create", [{}]]]}
        try:
            (party_id,) = self.rpc.model("party.party", "create", [values])
        except AdapterError:
            # Another worker may have created it first: the code is unique.
            found = self._search_read("party.party", [["code", "=", reference]], ["id"])
            if not found:
                raise
            logger.info(
                "Tryton party %s for %s was created meanwhile",
                found[0]["id"],
                reference,
            )
            return found[0]["id"]
        logger.info("Created Tryton party %s for customer %s", party_id, reference)
        return party_id

    def _header(self, command: CommandData, currency: Currency, party_id) -> dict:
        payload = command.payload
        sale_date = _sale_date(payload.get("close_date"))
        header = {
            "company": self._company_id(),
            "currency": currency.id,
            "sale_date": sale_date,
            "reference": command.idempotency_key,
            "description": payload.get("crm_reference") or "",
        }
        if payload.get("customer_po"):
            header["comment"] = f"Customer PO: {payload['customer_po']}"
        if party_id is not None:
            header["party"] = party_id
            header.update(self._party_defaults(header))
        return header

    def _party_defaults(self, header: dict) -> dict:
        values = {
            "id": -1,
            "party": header["party"],
            "company": header["company"],
            "lines": [],
            "invoice_party": None,
            "shipment_party": None,
            "warehouse": None,
            "payment_term": None,
        }
        changes = self.rpc.model("sale.sale", "on_change", values, ["party"])
        copied = ("invoice_address", "shipment_address", "payment_term")
        return {name: changes[name] for name in copied if changes.get(name)}

    def _sale_lines(self, plan, line: dict, number: int, products, defaults) -> list:
        sku = line["sku"]
        quantity = to_decimal(line.get("quantity"), f"quantity of line {number}")
        unit_price = to_decimal(line.get("unit_price"), f"unit price of line {number}")
        expected = to_decimal(line.get("line_total"), f"line total of line {number}")
        self._check_price_digits(unit_price, sku, number)
        product_id = products[sku]
        if product_id not in defaults:
            defaults[product_id] = self._line_defaults(plan, product_id, quantity)
        unit, taxes = defaults[product_id]
        if line.get("tax_code"):
            taxes = self._taxes(line["tax_code"], sku, number)

        gross = plan.currency.round(quantity * unit_price)
        values = {
            "type": "line",
            "product": product_id,
            "quantity": float(quantity),
            "unit": unit,
            "unit_price": unit_price,
            "taxes": taxes,
            "amount": gross,
        }
        if line.get("description"):
            values["description"] = line["description"]
        adjustment = expected - gross
        if not adjustment:
            return [values]
        if not _has_discount(line):
            raise AdapterError(
                "acceptance_failed",
                f"Line {number} ({sku}): Tryton computes {gross} {plan.currency.code} "
                f"for {quantity} x {unit_price}, but the command's line total is "
                f"{expected}.",
                detail={
                    "line": number,
                    "sku": sku,
                    "expected": str(expected),
                    "actual": str(gross),
                },
            )
        discount = {
            "type": "line",
            "product": None,
            "quantity": 1.0,
            "unit": None,
            "unit_price": adjustment,
            "taxes": taxes,
            "amount": adjustment,
            "description": _discount_description(line, sku),
        }
        return [values, discount]

    def _taxes(self, tax_code: str, sku: str, number: int) -> list[int]:
        """Return the ids of the Tryton taxes named ``tax_code``."""
        found = self._search_read("account.tax", [["name", "=", tax_code]], ["id"])
        if not found:
            raise AdapterError(
                "mapping_missing",
                f"Line {number} ({sku}): Tryton has no tax named {tax_code!r}. Map the "
                "CRM tax code to a Tryton tax name in the tax code lookup table.",
                detail={"tax_code": tax_code, "sku": sku},
            )
        return [row["id"] for row in found]

    def _check_price_digits(self, unit_price: Decimal, sku: str, number: int) -> None:
        digits = self._price_digits()
        if unit_price.as_tuple().exponent < -digits:
            raise AdapterError(
                "acceptance_failed",
                f"Line {number} ({sku}): the unit price {unit_price} has more than "
                f"the {digits} decimals Tryton stores; it was not rounded.",
                detail={"line": number, "sku": sku, "unit_price": str(unit_price)},
            )

    def _price_digits(self) -> int:
        """Return the decimals of sale.line.unit_price ([product] price_decimal)."""
        if self._unit_price_digits is None:
            fields = self.rpc.model("sale.line", "fields_get", ["unit_price"])
            digits = fields["unit_price"].get("digits")
            # fields_get sends digits as a JSON (PYSON) string such as "[null, 4]".
            if isinstance(digits, str):
                digits = json.loads(digits)
            self._unit_price_digits = int(digits[1])
        return self._unit_price_digits

    def _line_defaults(self, plan: SalePlan, product_id: int, quantity: Decimal):
        """Fetch the sale unit and customer taxes Tryton would fill in for a product."""
        header = plan.header
        values = {
            "id": -2,
            "type": "line",
            "product": product_id,
            "quantity": float(quantity),
            "unit": None,
            "unit_price": None,
            "taxes": [],
            "sale": -1,
            "company": header["company"],
            "_parent_sale.party": header.get("party"),
            "_parent_sale.invoice_party": None,
            "_parent_sale.company": header["company"],
            "_parent_sale.currency": header["currency"],
            "_parent_sale.sale_date": header["sale_date"],
        }
        changes = self.rpc.model("sale.line", "on_change", values, ["product"])
        return changes.get("unit"), _added_ids(changes.get("taxes"))

    def _check_totals(self, plan: SalePlan) -> dict:
        """Compute the sale's totals with Tryton's read-only on_change and compare."""
        header = plan.header
        values = {
            "id": -1,
            "currency": header["currency"],
            "company": header["company"],
            "party": header.get("party"),
            "sale_date": header["sale_date"],
            "lines": [
                dict(line, id=-2 - index) for index, line in enumerate(plan.lines)
            ],
        }
        changes = self.rpc.model("sale.sale", "on_change", values, ["lines"])
        currency = plan.currency
        untaxed = changes.get("untaxed_amount") or Decimal(0)
        expected = currency.round(plan.expected_total)
        if currency.round(untaxed) != expected:
            raise AdapterError(
                "acceptance_failed",
                f"Tryton's untaxed total {currency.format(untaxed)} {currency.code} "
                f"differs from the command total {expected}.",
                detail={"expected": str(expected), "actual": currency.format(untaxed)},
            )
        return {
            "untaxed_amount": currency.format(untaxed),
            "tax_amount": currency.format(changes.get("tax_amount")),
            "total_amount": currency.format(changes.get("total_amount")),
        }

    # Writing

    def _create_sale(self, plan: SalePlan) -> int:
        lines = []
        for line in plan.lines:
            values = {name: value for name, value in line.items() if name != "amount"}
            values["taxes"] = [["add", line["taxes"]]]
            lines.append(values)
        values = dict(plan.header, lines=[["create", lines]])
        (sale_id,) = self.rpc.model("sale.sale", "create", [values])
        logger.info(
            "Created Tryton draft sale %s for key %s", sale_id, plan.header["reference"]
        )
        return sale_id

    def _confirm(self, sale_id: int, state: str) -> None:
        try:
            if state == "draft":
                self.rpc.model("sale.sale", "quote", [sale_id])
            self.rpc.model("sale.sale", "confirm", [sale_id])
        except AdapterError as exc:
            if not exc.transient:
                self._cancel_unconfirmed(sale_id, exc)
            raise

    def _cancel_unconfirmed(self, sale_id: int, exc: AdapterError) -> None:
        logger.warning(
            "Cancelling Tryton sale %s that failed to confirm: %s", sale_id, exc.message
        )
        try:
            self.rpc.model("sale.sale", "cancel", [sale_id])
        except AdapterError as cancel_exc:
            logger.error(
                "Tryton sale %s could not be cancelled: %s", sale_id, cancel_exc.message
            )

    # Compensation

    def _compensate_sale(self, sale: dict) -> dict:
        """Cancel or credit what the sale produced; a second call finds nothing to do.

        Tryton 8.2 cancels a sale only before it is processed, so a processed
        sale keeps its state: its draft invoices and open shipments are
        cancelled and then ignored with sale's handle-exception wizards, and
        its posted invoices are credited.
        """
        sale_id = sale["id"]
        if sale["state"] in ("draft", "quotation", "confirmed"):
            if sale["state"] == "confirmed":
                self.rpc.model("sale.sale", "draft", [sale_id])
            self.rpc.model("sale.sale", "cancel", [sale_id])
            actions = ["cancelled_sale"]
        elif sale["state"] == "cancelled":
            actions = []
        else:
            actions = self._reverse_invoices(sale) + self._cancel_shipments(sale)
            actions += self._ignore_exceptions(sale_id)
        if not actions:
            return {"status": "already_compensated", "sale_id": sale_id, "actions": []}
        logger.info("Compensated Tryton sale %s: %s", sale_id, actions)
        return {"status": "compensated", "sale_id": sale_id, "actions": actions}

    def _reverse_invoices(self, sale: dict) -> list[str]:
        actions = []
        invoices = self._read("account.invoice", sale["invoices"], INVOICE_FIELDS)
        drafts = [row["id"] for row in invoices if row["state"] in DRAFT_INVOICE_STATES]
        if drafts:
            self.rpc.model("account.invoice", "cancel", drafts)
            actions.append(f"cancelled_invoices:{','.join(map(str, drafts))}")
        for invoice in invoices:
            if invoice["state"] not in ("posted", "paid"):
                continue
            if not self._credit_notes(invoice):
                actions.append(f"credit_note:{self._credit(invoice)}")
        return actions

    def _credit_notes(self, invoice: dict) -> list[dict]:
        origins = [f"account.invoice.line,{line_id}" for line_id in invoice["lines"]]
        if not origins:
            return []
        lines = self._search_read(
            "account.invoice.line",
            [["origin", "in", origins], ["invoice.state", "!=", "cancelled"]],
            ["invoice"],
        )
        note_ids = sorted({line["invoice"] for line in lines})
        return (
            self._read("account.invoice", note_ids, ["untaxed_amount", "state"])
            if note_ids
            else []
        )

    def _credit(self, invoice: dict) -> int:
        """Credit a posted invoice with Tryton's wizard, refunding it when allowed."""
        context = {
            "active_model": "account.invoice",
            "active_id": invoice["id"],
            "active_ids": [invoice["id"]],
        }
        wizard = "wizard.account.invoice.credit"
        session_id, _, _ = self.rpc.call(f"{wizard}.create", context=context)
        try:
            start = self.rpc.call(
                f"{wizard}.execute", session_id, {}, "start", context=context
            )
            defaults = start.get("view", {}).get("defaults", {})
            form = {
                "with_refund": bool(defaults.get("with_refund")),
                "with_refund_allowed": bool(defaults.get("with_refund_allowed")),
                "invoice_date": None,
            }
            answer = self.rpc.call(
                f"{wizard}.execute",
                session_id,
                {"start": form},
                "credit",
                context=context,
            )
        finally:
            self.rpc.call(f"{wizard}.delete", session_id, context=context)
        credit_ids = _credit_ids(answer)
        if not form["with_refund"]:
            self.rpc.model("account.invoice", "post", credit_ids)
        logger.info("Credited Tryton invoice %s with %s", invoice["id"], credit_ids)
        return credit_ids[0]

    def _cancel_shipments(self, sale: dict) -> list[str]:
        if not sale["shipments"]:
            return []
        shipments = self._read("stock.shipment.out", sale["shipments"], ["state"])
        open_ids = [
            row["id"] for row in shipments if row["state"] not in ("done", "cancelled")
        ]
        if not open_ids:
            return []
        self.rpc.model("stock.shipment.out", "cancel", open_ids)
        return [f"cancelled_shipments:{','.join(map(str, open_ids))}"]

    def _ignore_exceptions(self, sale_id: int) -> list[str]:
        """Tell Tryton to ignore the cancelled invoices and shipments of a sale."""
        context = {
            "active_model": "sale.sale",
            "active_id": sale_id,
            "active_ids": [sale_id],
        }
        (sale,) = self._read(
            "sale.sale", [sale_id], ["invoice_state", "shipment_state"]
        )
        actions = []
        if sale["invoice_state"] == "exception":
            self._run_ignore_wizard(
                "sale.handle.invoice.exception", "invoices", context
            )
            actions.append("ignored_cancelled_invoices")
        if sale["shipment_state"] == "exception":
            self._run_ignore_wizard("sale.handle.shipment.exception", "moves", context)
            actions.append("ignored_cancelled_moves")
        return actions

    def _run_ignore_wizard(self, name: str, records: str, context: dict) -> None:
        """Run a handle-exception wizard of sale, ignoring every cancelled record."""
        wizard = f"wizard.{name}"
        session_id, _, _ = self.rpc.call(f"{wizard}.create", context=context)
        try:
            ask = self.rpc.call(
                f"{wizard}.execute", session_id, {}, "ask", context=context
            )
            cancelled = (
                ask.get("view", {}).get("defaults", {}).get(f"domain_{records}", [])
            )
            form = {
                f"domain_{records}": cancelled,
                f"recreate_{records}": [],
                f"ignore_{records}": cancelled,
            }
            self.rpc.call(
                f"{wizard}.execute",
                session_id,
                {"ask": form},
                "handle",
                context=context,
            )
        finally:
            self.rpc.call(f"{wizard}.delete", session_id, context=context)

    def _invoice_ids(self, references: list[str]) -> dict[str, int | None]:
        """Return the first invoice id of each sale or invoice reference."""
        ids, sale_ids = {}, {}
        for reference in references:
            if reference.startswith("account.invoice:"):
                ids[reference] = _parse_reference(reference, "account.invoice")
            else:
                sale_ids[reference] = _parse_reference(reference, "sale.sale")
        if sale_ids:
            sales = self._search_read(
                "sale.sale",
                [["id", "in", sorted(set(sale_ids.values()))]],
                ["invoices"],
            )
            first = {
                sale["id"]: min(sale["invoices"]) if sale["invoices"] else None
                for sale in sales
            }
            for reference, sale_id in sale_ids.items():
                ids[reference] = first.get(sale_id)
        return ids


def _parse_reference(reference: str, model: str) -> int:
    prefix = f"{model}:"
    if not reference.startswith(prefix) or not reference[len(prefix) :].isdigit():
        raise AdapterError(
            "schema_invalid",
            f"{reference!r} is not a Tryton reference of the form {model}:<id>.",
        )
    return int(reference[len(prefix) :])


def _sale_date(close_date) -> date | None:
    """Parse the close date. Without one, Tryton's confirm sets today's date."""
    if close_date in (None, ""):
        return None
    try:
        return date.fromisoformat(close_date)
    except (TypeError, ValueError):
        raise AdapterError(
            "schema_invalid", f"The close date {close_date!r} is not an ISO date."
        ) from None


def _has_discount(line: dict) -> bool:
    return any(
        line.get(name) not in (None, "", "0")
        for name in ("discount_percent", "discount_amount")
    )


def _discount_description(line: dict, sku: str) -> str:
    parts = []
    if line.get("discount_percent") not in (None, ""):
        parts.append(f"{line['discount_percent']}%")
    if line.get("discount_amount") not in (None, ""):
        parts.append(f"{line['discount_amount']} per unit")
    return f"Discount {' + '.join(parts)} on {sku}"


def _added_ids(change) -> list[int]:
    """Read the record ids out of a Many2Many on_change value."""
    if isinstance(change, list):
        return [value if isinstance(value, int) else value["id"] for value in change]
    if isinstance(change, dict):
        return [entry[1]["id"] for entry in change.get("add", [])]
    return []


def _credit_ids(answer) -> list[int]:
    """Read the new credit note ids out of the credit wizard's action response."""
    actions = answer.get("actions") or []
    for action in actions:
        data = action[1] if len(action) > 1 else {}
        if isinstance(data, dict) and data.get("res_id"):
            return list(data["res_id"])
    raise AdapterError(
        "erp_rejected",
        "Tryton's credit wizard returned no credit note.",
        detail={"answer_keys": sorted(answer)},
    )
