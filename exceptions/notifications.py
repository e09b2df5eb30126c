"""Notifications about cases: a Slack-compatible incoming webhook and e-mail.

``notify_case`` stores one Notification row per channel and sends them after
the surrounding transaction commits, on a worker (inline with
``MESHLINE_SYNC_PIPELINE``). A failed send is recorded on the row and retried
with backoff by the escalation schedule. Nothing here raises into the caller,
so a broken mail server or webhook never stops the pipeline.
"""

import logging
from datetime import timedelta

import requests
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage
from django.db import transaction
from django.urls import reverse
from django.utils import timezone
from django.utils.http import urlencode

from exceptions.models import Notification
from meshline.logging import log_context
from meshline.roles import TRIAGE_LEAD

logger = logging.getLogger(__name__)

SLACK_TIMEOUT_SECONDS = 10
RETRY_BASE_SECONDS = 60
# A worker that claimed a notification and died leaves it due again after this.
CLAIM_SECONDS = 120

EVENT_SUBJECTS = {
    "opened": "New case {pk}: {title}",
    "assigned": "Case {pk} was assigned to you: {title}",
    "reminder": "Case {pk} is due soon: {title}",
    "reassigned": "Case {pk} breached its SLA and now belongs to Triage Lead",
    "executive": "Case {pk} is still open long after its SLA: {title}",
}


def case_links(case) -> tuple[str, str]:
    """Return the absolute URLs of the case page and of its record's trace."""
    base = settings.MESHLINE_BASE_URL.rstrip("/")
    case_url = base + reverse("exceptions:case-detail", args=[case.pk])
    trace_url = (
        base + reverse("syncflows:trace") + "?" + urlencode({"q": case.record_key})
    )
    return case_url, trace_url


def recipients_for(case, event: str) -> list[str]:
    """Return the e-mail addresses that should hear about ``event``."""
    if event == "executive":
        return list(settings.MESHLINE_EXECUTIVE_EMAILS)
    users = get_user_model().objects.filter(is_active=True).exclude(email="")
    if event == "reassigned":
        users = users.filter(groups__name=TRIAGE_LEAD)
    elif case.owner_user_id:
        users = users.filter(pk=case.owner_user_id)
    elif case.owner_group_id:
        users = users.filter(groups=case.owner_group_id)
    else:
        return []
    return sorted(set(users.values_list("email", flat=True)))


def message_text(case, event: str) -> tuple[str, str]:
    case_url, trace_url = case_links(case)
    subject = EVENT_SUBJECTS.get(event, "Case {pk}: {title}").format(
        pk=case.pk, title=case.title
    )
    owner = case.owner_user or case.owner_group or "nobody"
    body = (
        f"{case.title} ({case.reason_code}) for {case.record_key}.\n"
        f"{case.message}\n\n"
        f"Lane: {case.lane.name}. Owner: {owner}. "
        f"Due: {case.due_at:%Y-%m-%d %H:%M} UTC.\n"
        f"Case: {case_url}\nTrace: {trace_url}\n"
    )
    return subject[:300], body


def notify_case(case, event: str) -> list[int]:
    """Store the notifications of ``event`` and send them after the commit.

    Returns the ids of the stored notifications, or an empty list when
    nothing was stored (no channel configured, or an error that was logged).
    """
    with case.log_context():
        return _store_and_queue(case, event)


def _store_and_queue(case, event: str) -> list[int]:
    try:
        with transaction.atomic():
            ids = _store(case, event)
    except Exception:
        logger.exception("Storing %s notifications for case %s failed", event, case.pk)
        return []
    if ids:
        transaction.on_commit(lambda: queue_delivery(ids), robust=True)
    return ids


def _store(case, event: str) -> list[int]:
    subject, body = message_text(case, event)
    now = timezone.now()
    rows = []
    if settings.MESHLINE_SLACK_WEBHOOK_URL:
        rows.append(Notification(channel=Notification.Channel.SLACK, recipients=[]))
    emails = recipients_for(case, event)
    if emails:
        rows.append(Notification(channel=Notification.Channel.EMAIL, recipients=emails))
    for row in rows:
        row.case, row.event, row.subject, row.body = case, event, subject, body
        row.next_attempt_at = now
    return [row.pk for row in Notification.objects.bulk_create(rows)]


def queue_delivery(ids: list[int]) -> None:
    if settings.MESHLINE_SYNC_PIPELINE:
        for pk in ids:
            deliver(pk)
        return
    from django_q.tasks import async_task

    for pk in ids:
        try:
            async_task(
                "exceptions.tasks.deliver_notification_task", pk, group="notifications"
            )
        except Exception:
            # The row stays pending, so the escalation schedule sends it later.
            logger.exception(
                "Queueing notification %s failed; the escalation schedule retries it", pk
            )


def deliver(notification_id: int) -> str:
    """Send one due notification once and return its status.

    A failed send is recorded on the row and not raised; only a database error
    while claiming or recording the row propagates."""
    now = timezone.now()
    claimed = Notification.objects.filter(
        pk=notification_id,
        status=Notification.Status.PENDING,
        next_attempt_at__lte=now,
    ).update(next_attempt_at=now + timedelta(seconds=CLAIM_SECONDS))
    if not claimed:
        return (
            Notification.objects.filter(pk=notification_id)
            .values_list("status", flat=True)
            .first()
            or "missing"
        )
    notification = Notification.objects.get(pk=notification_id)
    with log_context(case_id=notification.case_id):
        return _send_claimed(notification)


def _send_claimed(notification) -> str:
    try:
        _send(notification)
    except Exception as exc:  # every failure is recorded and retried
        return _record_failure(notification, describe_error(exc))
    Notification.objects.filter(pk=notification.pk).update(
        status=Notification.Status.SENT,
        attempts=notification.attempts + 1,
        sent_at=timezone.now(),
        last_error="",
    )
    logger.info(
        "Notification %s (%s, %s) for case %s sent",
        notification.pk,
        notification.channel,
        notification.event,
        notification.case_id,
    )
    return Notification.Status.SENT


def _send(notification) -> None:
    if notification.channel == Notification.Channel.SLACK:
        send_slack(notification.subject, notification.body)
    else:
        EmailMessage(
            notification.subject,
            notification.body,
            settings.DEFAULT_FROM_EMAIL,
            notification.recipients,
        ).send()


class WebhookFailed(Exception):
    """A failed Slack webhook request. Its message does not contain the URL."""


def send_slack(subject: str, body: str) -> None:
    url = settings.MESHLINE_SLACK_WEBHOOK_URL
    if not url:
        raise WebhookFailed("No Slack webhook URL is configured.")
    try:
        response = requests.post(
            url, json={"text": f"*{subject}*\n{body}"}, timeout=SLACK_TIMEOUT_SECONDS
        )
    except requests.RequestException as exc:
        # The exception's text contains the URL, which is a secret.
        raise WebhookFailed(
            f"The Slack webhook request failed ({type(exc).__name__})."
        ) from None
    if not 200 <= response.status_code < 300:
        raise WebhookFailed(f"The Slack webhook returned HTTP {response.status_code}.")


def describe_error(exc: Exception) -> str:
    if isinstance(exc, WebhookFailed):
        return str(exc)
    text = str(exc)
    url = settings.MESHLINE_SLACK_WEBHOOK_URL
    if url:
        text = text.replace(url, "[webhook URL]")
    return f"{type(exc).__name__}: {text}"[:2000]


def _record_failure(notification, error: str) -> str:
    attempts = notification.attempts + 1
    gave_up = attempts >= settings.MESHLINE_NOTIFICATION_MAX_ATTEMPTS
    delay = RETRY_BASE_SECONDS * 2 ** (attempts - 1)
    Notification.objects.filter(pk=notification.pk).update(
        status=Notification.Status.FAILED if gave_up else Notification.Status.PENDING,
        attempts=attempts,
        last_error=error,
        next_attempt_at=timezone.now() + timedelta(seconds=delay),
    )
    logger.warning(
        "Notification %s (%s) for case %s failed on attempt %s%s: %s",
        notification.pk,
        notification.channel,
        notification.case_id,
        attempts,
        "; giving up" if gave_up else f"; retry in {delay} s",
        error,
    )
    return Notification.Status.FAILED if gave_up else Notification.Status.PENDING


def retry_due_notifications(now=None, limit: int = 200) -> int:
    """Send every pending notification that is due; return how many were tried."""
    now = now or timezone.now()
    ids = list(
        Notification.objects.filter(
            status=Notification.Status.PENDING, next_attempt_at__lte=now
        )
        .order_by("next_attempt_at", "id")
        .values_list("id", flat=True)[:limit]
    )
    for pk in ids:
        deliver(pk)
    return len(ids)
