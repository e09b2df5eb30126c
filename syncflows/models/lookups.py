from django.db import models


class LookupTable(models.Model):
    """A key-to-value table reachable from CEL as ``lookup("slug", key)``."""

    slug = models.SlugField(unique=True)
    name = models.CharField(max_length=200)
    description = models.TextField(blank=True)
    missing_reason = models.CharField(
        max_length=32,
        default="mapping_missing",
        help_text="Reason code of the exception opened when a key is not in the table.",
    )
    # Raised on every row change, so that workers know when to reload a table.
    version = models.PositiveBigIntegerField(default=0, editable=False)

    class Meta:
        ordering = ["slug"]

    def __str__(self):
        return self.name


class LookupRow(models.Model):
    table = models.ForeignKey(LookupTable, on_delete=models.CASCADE, related_name="rows")
    key = models.CharField(max_length=200)
    value = models.CharField(max_length=500)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["table", "key"]
        constraints = [
            models.UniqueConstraint(fields=["table", "key"], name="lookup_row_unique")
        ]

    def __str__(self):
        return f"{self.table.slug}[{self.key}]"

    def save(self, *args, **kwargs):
        super().save(*args, **kwargs)
        LookupTable.objects.filter(pk=self.table_id).update(version=models.F("version") + 1)

    def delete(self, *args, **kwargs):
        table_id = self.table_id
        result = super().delete(*args, **kwargs)
        LookupTable.objects.filter(pk=table_id).update(version=models.F("version") + 1)
        return result
