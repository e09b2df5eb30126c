"""E-mail to the people who must act next on a brief version or trigger change.

Mails are sent after the transaction commits, so a rolled-back transition
never sends a request to act.
"""

import logging

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import send_mail
from django.db import transaction

logger = logging.getLogger(__name__)


def users_with_role(role: str, *, exclude_ids=()):
    """Active users in the role's group, superusers left out unless they are members."""
    return (
        get_user_model()
        .objects.filter(groups__name=role, is_active=True)
        .exclude(pk__in=[pk for pk in exclude_ids if pk])
        .exclude(email="")
        .distinct()
    )


def notify(users, subject: str, body: str, *, link: str = "") -> list[str]:
    """Queue one mail to ``users`` for after the commit; return the addresses."""
    recipients = sorted({user.email for user in users if user and user.email})
    if not recipients:
        return []
    text = f"{body}\n\n{_absolute(link)}\n" if link else f"{body}\n"
    transaction.on_commit(lambda: _send(subject, text, recipients))
    return recipients


def _absolute(link: str) -> str:
    base = getattr(settings, "MESHLINE_BASE_URL", "").rstrip("/")
    return f"{base}{link}" if base else link


def _send(subject: str, text: str, recipients: list[str]) -> None:
    try:
        send_mail(f"[Meshline] {subject}", text, None, recipients)
    except Exception:
        # A mail server that is down must not undo a committed approval.
        logger.exception(
            "Sending the notice %r to %s people failed", subject, len(recipients)
        )
    else:
        logger.info("Sent the notice %r to %s people", subject, len(recipients))
