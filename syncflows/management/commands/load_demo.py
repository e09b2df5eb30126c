import logging
import os
from pathlib import Path

from django.contrib.auth.models import Group, User
from django.core.management.base import BaseCommand, CommandError

from meshline import roles
from syncflows.adapters import AdapterError
from syncflows.adapters.tryton_rpc import TrytonRPC
from syncflows.demo import DEMO_SECRETS, load_demo_configuration
from syncflows.management.commands.setup_tryton import ADMIN_LOGIN, TRYTON_DIR

logger = logging.getLogger(__name__)

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

ERP_CHOICES = ("sandbox", "tryton")
# The defaults match what ``setup_tryton`` prepares with its own defaults.
TRYTON_DEFAULTS = {
    "url": "http://127.0.0.1:8069",
    "database": "meshline",
    "login": ADMIN_LOGIN,
}


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _default_password_file() -> str:
    # setup_tryton writes the admin password to $TRYTONPASSFILE, else here.
    return os.environ.get("TRYTONPASSFILE") or str(TRYTON_DIR / "admin-password")


def _count(value: str) -> int:
    number = int(value)
    if number < 0:
        raise ValueError(value)
    return number


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
            type=_count,
            default=0,
            metavar="N",
            help="Also feed N synthetic won deals (plus a few failing ones) through "
            "the receive path; a worker turns them into orders.",
        )
        parser.add_argument(
            "--erp",
            choices=ERP_CHOICES,
            default=_env("MESHLINE_DEMO_ERP", "sandbox"),
            help="Where the demo routes its orders: the embedded sandbox, or a local "
            "Tryton prepared by setup_tryton. Default: $MESHLINE_DEMO_ERP, else "
            "sandbox.",
        )
        tryton = parser.add_argument_group("Tryton (with --erp tryton)")
        tryton.add_argument(
            "--tryton-url",
            default=_env("MESHLINE_DEMO_TRYTON_URL", TRYTON_DEFAULTS["url"]),
            help="Base URL of trytond. Default: $MESHLINE_DEMO_TRYTON_URL, else "
            "%(default)s.",
        )
        tryton.add_argument(
            "--tryton-database",
            default=_env("MESHLINE_DEMO_TRYTON_DATABASE", TRYTON_DEFAULTS["database"]),
            help="Tryton database name. Default: $MESHLINE_DEMO_TRYTON_DATABASE, "
            "else %(default)s.",
        )
        tryton.add_argument(
            "--tryton-login",
            default=_env("MESHLINE_DEMO_TRYTON_LOGIN", TRYTON_DEFAULTS["login"]),
            help="Tryton user. Default: $MESHLINE_DEMO_TRYTON_LOGIN, else %(default)s.",
        )
        tryton.add_argument(
            "--tryton-password-file",
            default=_env(
                "MESHLINE_DEMO_TRYTON_PASSWORD_FILE", _default_password_file()
            ),
            help="File that contains the Tryton user's password. The destination "
            "stores only its path. Default: $MESHLINE_DEMO_TRYTON_PASSWORD_FILE, else "
            "setup_tryton's admin password file (%(default)s).",
        )

    def handle(self, *args, **options):
        # argparse checks choices only for values given on the command line.
        if options["erp"] not in ERP_CHOICES:
            raise CommandError(
                f"Unknown demo ERP {options['erp']!r} (from MESHLINE_DEMO_ERP); "
                f"use one of {', '.join(ERP_CHOICES)}."
            )
        if options["erp"] == "tryton":
            settings = self._tryton_settings(options)
            connectors = load_demo_configuration("tryton", settings)
            self._check_tryton(settings)
        else:
            connectors = load_demo_configuration()
        from exceptions.demo import load_demo_lanes

        load_demo_lanes()
        self.stdout.write("Connectors (POST deliveries to /api/v1/inbound/<slug>/):")
        for slug, connector in connectors.items():
            secret = DEMO_SECRETS.get(slug) or "(none: checked by organisation id)"
            self.stdout.write(
                f"  {slug:<20} {connector.get_kind_display():<34} secret: {secret}"
            )
        if not options["no_users"]:
            self._create_users()
        if options["deliveries"]:
            from syncflows.demo import load_demo_deliveries

            tally = load_demo_deliveries(options["deliveries"])
            text = ", ".join(f"{n} {status}" for status, n in sorted(tally.items()))
            self.stdout.write(f"Demo deliveries: {text}.")
        self.stdout.write(self.style.SUCCESS("Demo configuration loaded."))

    def _tryton_settings(self, options) -> dict:
        password_file = Path(options["tryton_password_file"]).expanduser()
        if not password_file.is_file():
            raise CommandError(
                f"The Tryton password file {password_file} does not exist. Run "
                "`manage.py setup_tryton` first, or pass --tryton-password-file."
            )
        return {
            "url": options["tryton_url"],
            "database": options["tryton_database"],
            "login": options["tryton_login"],
            "password_file": str(password_file.resolve()),
        }

    def _check_tryton(self, settings: dict) -> None:
        """Log in once, so a wrong URL or password shows now, not on the first order."""
        rpc = TrytonRPC(
            settings["url"],
            settings["database"],
            settings["login"],
            Path(settings["password_file"]).read_text().strip(),
            timeout=10,
        )
        try:
            rpc.authenticate()
        except AdapterError as exc:
            logger.warning("Tryton check for the demo failed: %s", exc.message)
            self.stdout.write(
                self.style.WARNING(
                    f"Orders go to Tryton at {settings['url']}, which failed the "
                    f"login check: {exc.message} Start it with: trytond -c "
                    "var/tryton/trytond.conf -d " + settings["database"]
                )
            )
            return
        finally:
            rpc.close()
        self.stdout.write(
            f"Orders go to Tryton database {settings['database']} at "
            f"{settings['url']} as {settings['login']}."
        )

    def _create_users(self):
        self.stdout.write(f"Demo users (password {DEMO_PASSWORD!r}):")
        for username, first, last, role in DEMO_USERS:
            user, created = User.objects.get_or_create(
                username=username,
                defaults={
                    "first_name": first,
                    "last_name": last,
                    "email": f"{username}@example.com",
                },
            )
            if created:
                user.set_password(DEMO_PASSWORD)
            user.is_staff = role == roles.ADMIN
            user.is_superuser = role == roles.ADMIN
            user.save()
            user.groups.add(Group.objects.get_or_create(name=role)[0])
            self.stdout.write(f"  {username:<12} {role}")
