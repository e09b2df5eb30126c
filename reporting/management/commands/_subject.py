"""Shared parts of the data-subject commands."""

from django.contrib.auth import get_user_model
from django.core.management.base import CommandError


def add_subject_arguments(parser) -> None:
    parser.add_argument(
        "query",
        help="A CRM record id, a record key such as hubspot:deal:900000001, or an "
        "ERP document number.",
    )
    parser.add_argument(
        "--user",
        required=True,
        help="User name of the admin this request is made for; it is recorded in "
        "the ledger.",
    )


def acting_user(username: str):
    user = get_user_model().objects.filter(username=username, is_active=True).first()
    if user is None:
        raise CommandError(f"No active user is named {username!r}: pass --user.")
    return user
