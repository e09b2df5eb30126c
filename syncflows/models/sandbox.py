"""The sandbox ERP: a simulator with its own catalogue, customers and rules.

It writes only to these tables, never to a real ERP, so the demo and dry runs
behave like an ERP that rejects unknown products, customers and currencies.
"""

from django.db import models

from meshline.fields import BulkJSONField


class SandboxProduct(models.Model):
    destination = models.ForeignKey(
        "syncflows.Destination", on_delete=models.CASCADE, related_name="sandbox_products"
    )
    code = models.CharField(max_length=100)
    name = models.CharField(max_length=200)
    is_active = models.BooleanField(default=True)

    class Meta:
        ordering = ["code"]
        constraints = [
            models.UniqueConstraint(fields=["destination", "code"], name="sandbox_product_unique")
        ]

    def __str__(self):
        return self.code


class SandboxCustomer(models.Model):
    destination = models.ForeignKey(
        "syncflows.Destination", on_delete=models.CASCADE, related_name="sandbox_customers"
    )
    reference = models.CharField(max_length=200, help_text="The CRM reference of the customer.")
    name = models.CharField(max_length=300)

    class Meta:
        ordering = ["reference"]
        constraints = [
            models.UniqueConstraint(
                fields=["destination", "reference"], name="sandbox_customer_unique"
            )
        ]

    def __str__(self):
        return f"{self.name} ({self.reference})"


class SandboxCurrency(models.Model):
    destination = models.ForeignKey(
        "syncflows.Destination", on_delete=models.CASCADE, related_name="sandbox_currencies"
    )
    code = models.CharField(max_length=3)

    class Meta:
        verbose_name_plural = "sandbox currencies"
        constraints = [
            models.UniqueConstraint(fields=["destination", "code"], name="sandbox_currency_unique")
        ]

    def __str__(self):
        return self.code


class SandboxOrder(models.Model):
    class State(models.TextChoices):
        CONFIRMED = "confirmed", "Confirmed"
        CANCELLED = "cancelled", "Cancelled"

    destination = models.ForeignKey(
        "syncflows.Destination", on_delete=models.PROTECT, related_name="sandbox_orders"
    )
    number = models.CharField(max_length=32, unique=True)
    idempotency_key = models.CharField(max_length=64)
    crm_reference = models.CharField(max_length=300, db_index=True)
    customer = models.ForeignKey(SandboxCustomer, on_delete=models.PROTECT)
    currency = models.CharField(max_length=3)
    total = models.DecimalField(max_digits=18, decimal_places=3)
    lines = BulkJSONField()
    close_date = models.DateField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=State.CONFIRMED)
    invoice_number = models.CharField(max_length=32, blank=True)
    invoice_total = models.DecimalField(max_digits=18, decimal_places=3, null=True, blank=True)
    paid_on = models.DateField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-id"]
        constraints = [
            # The ERP side of idempotency: one document per key.
            models.UniqueConstraint(
                fields=["destination", "idempotency_key"], name="sandbox_order_key_unique"
            )
        ]

    def __str__(self):
        return self.number
