from django.db import migrations


class Migration(migrations.Migration):
    """Join the CRM read-back and brief lifecycle branches, built side by side."""

    dependencies = [
        ("syncflows", "0004_crm_readback"),
        ("syncflows", "0005_brief_lifecycle"),
    ]

    operations = []
