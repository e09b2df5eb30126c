"""Prepare a local Tryton 8.2 database for Meshline's ``tryton`` destination.

The command writes a trytond configuration file and creates the database.
``trytond-admin`` then creates the base and activates ``sale`` and
``account_invoice``. Last, proteus loads the demo data: a company in EUR, the
USD, JPY and KWD currencies, a chart of accounts, fiscal years, a payment
term, a tax, products and customers. trytond-admin and proteus run in
subprocesses, so Tryton's global pool and configuration never enter
Django's process.

Customers carry their CRM reference (for example ``hubspot:company:800000001``)
in the party ``code``, which Tryton keeps unique, and products carry the SKU
in the product ``code``.
"""

import hashlib
import logging
import os
import secrets
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from django.core.management.base import BaseCommand, CommandError

logger = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parents[3]
TRYTON_DIR = PROJECT_DIR / "var" / "tryton"
DEFAULT_DATABASE_URL = "sqlite:///var/tryton/meshline.sqlite"
DEFAULT_CONFIG = "var/tryton/trytond.conf"
ADMIN_LOGIN = "admin"

# The product that marks a finished set-up: the proteus step creates it last.
SETUP_MARKER_SKU = "P1"

PRODUCTS = [
    # (code, name, type, list price in EUR)
    ("FAKE-SKU-100", "Widget 100 (FAKE)", "goods", "99.99"),
    ("FAKE-SKU-200", "Widget 200 (FAKE)", "goods", "249.00"),
    ("FAKE-SKU-SHIP", "Shipping (FAKE)", "service", "15.00"),
    ("FAKE-SKU-BOLT", "Bolt M6 (FAKE)", "goods", "0.139"),
    ("FAKE-SKU-DEAL", "Deal without line items (FAKE)", "service", "1.00"),
    (SETUP_MARKER_SKU, "Product P1 (FAKE)", "goods", "10.00"),
]

CUSTOMERS = [
    ("salesforce_cdc:Account:001xx0000000001AAA", "Acme Testing GmbH (FAKE)", "Berlin"),
    ("hubspot:company:800000001", "Yllä Esimerkki Oy (FAKE)", "Helsinki"),
    ("pipedrive:organization:201", "Pipedrive Demo Ltd (FAKE)", "Tallinn"),
    ("salesforce_outbound:Account:001xx0000000001AAA", "Example Widgets Ltd (FAKE)", "London"),
    ("salesforce_outbound:Account:001xx0000000002AAA", "Sample Backpacks Inc (FAKE)", "Dublin"),
]

# (code, name, symbol, rounding, digits, rate against EUR)
CURRENCIES = [
    ("EUR", "Euro", "€", "0.01", 2, "1"),
    ("USD", "U.S. Dollar", "$", "0.01", 2, "1.08"),
    ("JPY", "Japanese Yen", "¥", "1", 0, "161"),
    ("KWD", "Kuwaiti Dinar", "KD", "0.001", 3, "0.332"),
]

TAX_RATE = "0.24"


@dataclass(frozen=True)
class TrytonDatabase:
    """Location of a Tryton database, in the terms of trytond's configuration."""

    uri: str  # the [database] uri, without the database name
    name: str
    sqlite_dir: Path | None = None  # the [database] path for SQLite

    @property
    def sqlite_file(self) -> Path | None:
        if self.sqlite_dir is None:
            return None
        return self.sqlite_dir / f"{self.name}.sqlite"


def parse_database_url(url: str) -> TrytonDatabase:
    """Split a database URL into trytond's uri, database name and SQLite path."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        # sqlite:///var/x.sqlite is relative to the project, sqlite:////x.sqlite
        # is absolute, as in SQLAlchemy's URLs.
        file = PROJECT_DIR / url.removeprefix("sqlite:///")
        if file.suffix != ".sqlite" or not file.stem:
            raise ValueError(
                f"The SQLite URL {url!r} must name a file ending in .sqlite, "
                "for example sqlite:///var/tryton/meshline.sqlite."
            )
        return TrytonDatabase(uri="sqlite://", name=file.stem, sqlite_dir=file.parent)
    if parts.scheme in ("postgresql", "postgres"):
        name = parts.path.lstrip("/")
        if not name:
            raise ValueError(f"The PostgreSQL URL {url!r} names no database.")
        server = parts._replace(scheme="postgresql", path="/").geturl()
        return TrytonDatabase(uri=server, name=name)
    raise ValueError(
        f"The database URL {url!r} is not supported; use sqlite:///FILE.sqlite "
        "or postgresql://USER@HOST:PORT/NAME."
    )


def write_config(path: Path, database: TrytonDatabase, listen: str) -> None:
    lines = ["[database]", f"uri = {database.uri}"]
    if database.sqlite_dir is not None:
        lines.append(f"path = {database.sqlite_dir}")
    lines += [
        "",
        "[web]",
        f"listen = {listen}",
        "",
        "[session]",
        "authentications = password",
        "",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines))


def setup_script_version() -> str:
    """Return a hash of this file, so a cached database is rebuilt when it changes."""
    return hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]


def admin_password_file() -> Path:
    """Return the admin password file: $TRYTONPASSFILE, else a generated one."""
    named = os.environ.get("TRYTONPASSFILE")
    if named:
        return Path(named)
    path = TRYTON_DIR / "admin-password"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_urlsafe(18) + "\n")
        path.chmod(0o600)
    return path


def is_prepared(database: TrytonDatabase) -> bool:
    """Tell whether the proteus step has finished on this database."""
    if database.sqlite_file is not None:
        return _sqlite_is_prepared(database.sqlite_file)
    return _postgresql_is_prepared(database)


_MARKER_QUERY = "SELECT count(*) FROM product_product WHERE code = %s"


def _sqlite_is_prepared(file: Path) -> bool:
    if not file.exists():
        return False
    try:
        with sqlite3.connect(file) as connection:
            query = _MARKER_QUERY.replace("%s", "?")
            row = connection.execute(query, (SETUP_MARKER_SKU,)).fetchone()
    except sqlite3.Error as exc:
        logger.debug("SQLite file %s is not a prepared Tryton database: %s", file, exc)
        return False
    return bool(row[0])


def _postgresql_is_prepared(database: TrytonDatabase) -> bool:
    import psycopg

    try:
        with psycopg.connect(_pg_dsn(database, database.name)) as connection:
            row = connection.execute(_MARKER_QUERY, (SETUP_MARKER_SKU,)).fetchone()
    except psycopg.Error as exc:
        logger.debug(
            "Database %s is not a prepared Tryton database: %s", database.name, exc
        )
        return False
    return bool(row[0])


def _pg_dsn(database: TrytonDatabase, name: str) -> str:
    return urlsplit(database.uri)._replace(path=f"/{name}").geturl()


def create_empty_database(database: TrytonDatabase, force: bool) -> None:
    if database.sqlite_file is not None:
        database.sqlite_dir.mkdir(parents=True, exist_ok=True)
        if force and database.sqlite_file.exists():
            database.sqlite_file.unlink()
        # trytond-admin opens an SQLite database only when the file exists.
        database.sqlite_file.touch()
        return
    import psycopg
    from psycopg import sql

    with psycopg.connect(_pg_dsn(database, "postgres"), autocommit=True) as conn:
        name = sql.Identifier(database.name)
        if force:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(name))
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database.name,)
        ).fetchone()
        if not exists:
            conn.execute(sql.SQL("CREATE DATABASE {} ENCODING 'UTF8'").format(name))


def run_step(log, title: str, args: list[str], env: dict | None = None) -> None:
    started = time.monotonic()
    log(f"{title}…")
    completed = subprocess.run(
        args, env=env, capture_output=True, text=True, cwd=PROJECT_DIR
    )
    if completed.returncode != 0:
        tail = (completed.stderr or completed.stdout).strip().splitlines()[-15:]
        raise RuntimeError(
            f"{title} failed with exit code {completed.returncode}:\n" + "\n".join(tail)
        )
    log(f"{title}: done in {time.monotonic() - started:.1f} s")


def prepare_database(
    database_url: str = DEFAULT_DATABASE_URL,
    config_path: str | Path = DEFAULT_CONFIG,
    *,
    force: bool = False,
    listen: str = "127.0.0.1:8069",
    password_file: Path | None = None,
    log=print,
) -> bool:
    """Create and fill the Tryton database; return False if it was already prepared."""
    database = parse_database_url(database_url)
    config = Path(config_path)
    if not config.is_absolute():
        config = PROJECT_DIR / config
    write_config(config, database, listen)
    log(f"Wrote the trytond configuration {config}")
    if not force and is_prepared(database):
        log(f"The Tryton database {database.name} is already prepared; nothing to do.")
        return False

    create_empty_database(database, force)
    bin_dir = Path(sys.executable).parent
    password_file = password_file or admin_password_file()
    env = dict(os.environ, TRYTONPASSFILE=str(password_file))
    admin = [str(bin_dir / "trytond-admin"), "-c", str(config), "-d", database.name]
    run_step(
        log,
        "Creating the Tryton base (trytond-admin --all)",
        [*admin, "--all", "--email", "admin@example.com"],
        env,
    )
    run_step(
        log,
        "Activating sale and account_invoice",
        [*admin, "-u", "sale", "account_invoice", "--activate-dependencies"],
        env,
    )
    run_step(
        log,
        "Loading company, accounts, currencies, products and customers (proteus)",
        [sys.executable, __file__, "load-data", str(config), database.name],
        env,
    )
    log(f"The Tryton database {database.name} is ready; admin login {ADMIN_LOGIN!r}.")
    return True


class Command(BaseCommand):
    help = (
        "Create a local Tryton 8.2 database with a company, accounts, currencies, "
        "products and customers for Meshline's tryton destination."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--database-url",
            default=DEFAULT_DATABASE_URL,
            help="sqlite:///FILE.sqlite (relative to the project) or "
            "postgresql://USER@HOST:PORT/NAME. Default: %(default)s.",
        )
        parser.add_argument(
            "--config",
            default=DEFAULT_CONFIG,
            help="Path of the trytond configuration file to write. "
            "Default: %(default)s.",
        )
        parser.add_argument(
            "--listen",
            default="127.0.0.1:8069",
            help="Address and port trytond serves on. Default: %(default)s.",
        )
        parser.add_argument(
            "--force",
            action="store_true",
            help="Drop and rebuild the database even when it is already prepared.",
        )

    def handle(self, *args, **options):
        try:
            prepare_database(
                options["database_url"],
                options["config"],
                force=options["force"],
                listen=options["listen"],
                log=self.stdout.write,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"Admin password file: {admin_password_file()}. "
            f"Start the server with: trytond -c {options['config']} -d "
            f"{parse_database_url(options['database_url']).name}"
        )


# The proteus step below runs in its own process (``setup_tryton.py load-data``).


def load_data(config_file: str, database_name: str) -> None:
    import datetime
    from decimal import Decimal

    from proteus import Model, config

    proteus_config = config.set_trytond(database_name, config_file=config_file)
    currencies = _create_currencies(Model, Decimal, datetime)
    _create_company_and_chart(currencies["EUR"], proteus_config)
    _create_fiscal_years(datetime)
    payment_term = _create_payment_term()
    category = _create_account_category(Decimal)
    _create_customers(Model, payment_term)
    _set_sale_sequence_prefix(Model)
    _create_products(Model, Decimal, category)


def _create_currencies(Model, Decimal, datetime):
    Currency = Model.get("currency.currency")
    Rate = Model.get("currency.currency.rate")
    created = {}
    for code, name, symbol, rounding, digits, rate in CURRENCIES:
        found = Currency.find([("code", "=", code)])
        currency = found[0] if found else Currency(code=code)
        currency.name = name
        currency.symbol = symbol
        currency.rounding = Decimal(rounding)
        currency.digits = digits
        currency.save()
        if not currency.rates:
            Rate(
                date=datetime.date(2000, 1, 1), rate=Decimal(rate), currency=currency
            ).save()
        created[code] = currency
    return created


def _create_company_and_chart(currency, proteus_config):
    from proteus import Model
    from trytond.modules.account.tests.tools import create_chart
    from trytond.modules.company.tests.tools import create_company

    Party = Model.get("party.party")
    party = Party(name="Meshline Demo Company (FAKE)")
    party.save()
    create_company(party=party, currency=currency)
    create_chart()


def _create_fiscal_years(datetime):
    from trytond.modules.account.tests.tools import create_fiscalyear
    from trytond.modules.account_invoice.tests.tools import (
        set_fiscalyear_invoice_sequences,
    )

    # CRM close dates lie in the past and invoices are posted today.
    for year in range(2023, datetime.date.today().year + 2):
        period = (datetime.date(year, 1, 1), datetime.date(year, 12, 31))
        fiscal_year = create_fiscalyear(today=period)
        fiscal_year.name = str(year)
        fiscal_year = set_fiscalyear_invoice_sequences(fiscal_year)
        invoice_sequence = fiscal_year.invoice_sequences[0].out_invoice_sequence
        invoice_sequence.prefix = f"INV-{year}-"
        invoice_sequence.padding = 5
        invoice_sequence.save()
        fiscal_year.click("create_period")


def _set_sale_sequence_prefix(Model):
    Configuration = Model.get("sale.configuration")
    sequence = Configuration(1).sale_sequence
    sequence.prefix = "SO-"
    sequence.padding = 5
    sequence.save()


def _create_payment_term():
    from trytond.modules.account_invoice.tests.tools import create_payment_term

    payment_term = create_payment_term()
    payment_term.save()
    return payment_term


def _create_account_category(Decimal):
    from proteus import Model
    from trytond.modules.account.tests.tools import create_tax, get_accounts

    accounts = get_accounts()
    tax = create_tax(Decimal(TAX_RATE))
    tax.name = tax.description = f"VAT {Decimal(TAX_RATE) * 100:.0f}%"
    tax.save()
    Category = Model.get("product.category")
    category = Category(name="Meshline demo sales")
    category.accounting = True
    category.account_revenue = accounts["revenue"]
    category.account_expense = accounts["expense"]
    category.customer_taxes.append(tax)
    category.save()
    return category


def _create_customers(Model, payment_term):
    Party = Model.get("party.party")
    for code, name, city in CUSTOMERS:
        party = Party(name=name, code=code)
        party.customer_payment_term = payment_term
        address = party.addresses[0] if party.addresses else party.addresses.new()
        address.street = "Esimerkkikatu 1"
        address.postal_code = "00100"
        address.city = city
        party.save()


def _create_products(Model, Decimal, category):
    Uom = Model.get("product.uom")
    Template = Model.get("product.template")
    (unit,) = Uom.find([("name", "=", "Unit")])
    for code, name, kind, price in PRODUCTS:
        template = Template(name=name, type=kind, default_uom=unit)
        template.salable = True
        template.list_price = Decimal(price)
        template.account_category = category
        template.code = code
        template.save()


if __name__ == "__main__" and sys.argv[1:2] == ["load-data"]:
    load_data(sys.argv[2], sys.argv[3])
