"""Background work of the exception lanes on django-q2. Tasks take ids."""

import logging

logger = logging.getLogger(__name__)


def escalation_task() -> dict:
    """Run the due escalation steps, then retry due notifications."""
    from exceptions.notifications import retry_due_notifications
    from exceptions.services.escalation import run_escalation

    fired = run_escalation()
    fired["notifications_tried"] = retry_due_notifications()
    return fired


def deliver_notification_task(notification_id: int) -> str:
    from exceptions.notifications import deliver

    return deliver(notification_id)


def run_bulk_task(bulk_id: int) -> None:
    from exceptions.services.bulk import run_bulk_action

    run_bulk_action(bulk_id)
