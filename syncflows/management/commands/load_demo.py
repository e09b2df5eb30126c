from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand

from meshline import roles
from syncflows.demo import DEMO_SECRETS, load_demo_configuration

DEMO_USERS = [
    ("sales", "Sam", "Sales", roles.SALES_OPS),
    ("finance", "Fay", "Finance", roles.FINANCE),
    ("pricing", "Pia", "Pricing", roles.PRICING_OPS),
    ("masterdata", "Max", "Master", roles.MASTER_DATA),
    ("triage", "Tess", "Triage", roles.TRIAGE_LEAD),
    ("admin", "Ada", "Admin", roles.ADMIN),
    ("viewer", "Vic", "Viewer", roles.VIEWER),
]
DEMO_PASSWORD = "meshline-demo"


class Command(BaseCommand):
    help = (
        "Load the demo configuration (connectors, triggers, briefs, lookup tables, "
        "routing, sandbox catalogue) and one demo user per role. Starts nothing."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--no-users", action="store_true", help="Do not create the demo users."
        )
        parser.add_argument(
            "--deliveries",
            type=int,
            default=0,
            metavar="N",
            help="Also feed N synthetic won deals (plus a few failing ones) through the "
            "receive path; a worker turns them into orders.",
        )

    def handle(self, *args, **options):
        connectors = load_demo_configuration()
        self.stdout.write("Connectors (POST deliveries to /api/v1/inbound/<slug>/):")
        for slug, connector in connectors.items():
            secret = DEMO_SECRETS.get(slug) or "(none: checked by organisation id)"
            self.stdout.write(f"  {slug:<20} {connector.get_kind_display():<34} secret: {secret}")
        if not options["no_users"]:
            self._create_users()
        if options["deliveries"]:
            from syncflows.demo import load_demo_deliveries

            tally = load_demo_deliveries(options["deliveries"])
            text = ", ".join(f"{n} {status}" for status, n in sorted(tally.items()))
            self.stdout.write(f"Demo deliveries: {text}.")
        self.stdout.write(self.style.SUCCESS("Demo configuration loaded."))

    def _create_users(self):
        self.stdout.write(f"Demo users (password {DEMO_PASSWORD!r}):")
        for username, first, last, role in DEMO_USERS:
            user, created = User.objects.get_or_create(
                username=username,
                defaults={"first_name": first, "last_name": last, "email": f"{username}@example.com"},
            )
            if created:
                user.set_password(DEMO_PASSWORD)
            user.is_staff = role == roles.ADMIN
            user.is_superuser = role == roles.ADMIN
            user.save()
            user.groups.add(Group.objects.get_or_create(name=role)[0])
            self.stdout.write(f"  {username:<12} {role}")
