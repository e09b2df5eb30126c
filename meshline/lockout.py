"""Login throttling: lock a user name or a client IP out after repeated failures.

``LockoutModelBackend`` wraps Django's ``ModelBackend``, so the console's login
page and the admin login both go through it. Failures are counted per user
name and per client IP within ``MESHLINE_LOGIN_FAILURE_WINDOW_MINUTES``. After
``MESHLINE_LOGIN_MAX_FAILURES`` failures for one user name (or
``MESHLINE_LOGIN_MAX_FAILURES_PER_IP`` from one IP) every login for it is
rejected for ``MESHLINE_LOGIN_LOCKOUT_MINUTES``, even with the right password.
The login form shows its usual "incorrect user name or password" error either
way, so that a locked-out name cannot be told apart from a wrong password.
Admins see and lift lock-outs in admin under Meshline › Login throttles.
"""

import logging
from datetime import timedelta

from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.db import transaction
from django.utils import timezone

from meshline.models import LoginThrottle

logger = logging.getLogger(__name__)


def client_ip(request) -> str:
    """Return the client IP, from ``MESHLINE_CLIENT_IP_HEADER`` behind a proxy."""
    if request is None:
        return ""
    header = settings.MESHLINE_CLIENT_IP_HEADER
    value = request.META.get(header, "") if header else ""
    if value:
        # X-Forwarded-For lists the client first; the proxy appends after it.
        return value.split(",")[0].strip()[:150]
    return request.META.get("REMOTE_ADDR", "")[:150]


def _keys(username: str, ip: str) -> list[tuple[str, str, int]]:
    keys = []
    if username:
        keys.append(
            (
                LoginThrottle.Kind.USERNAME,
                username.lower()[:150],
                settings.MESHLINE_LOGIN_MAX_FAILURES,
            )
        )
    if ip:
        keys.append(
            (LoginThrottle.Kind.IP, ip, settings.MESHLINE_LOGIN_MAX_FAILURES_PER_IP)
        )
    return keys


def locked_out(username: str, ip: str) -> LoginThrottle | None:
    """Return the lock-out that blocks this login, or None."""
    now = timezone.now()
    for kind, value, _limit in _keys(username, ip):
        throttle = LoginThrottle.objects.filter(kind=kind, value=value).first()
        if throttle is not None and throttle.is_locked(now):
            return throttle
    return None


def record_failure(username: str, ip: str) -> None:
    """Count one failed login for the user name and the IP; lock at the limit."""
    now = timezone.now()
    window = timedelta(minutes=settings.MESHLINE_LOGIN_FAILURE_WINDOW_MINUTES)
    lockout = timedelta(minutes=settings.MESHLINE_LOGIN_LOCKOUT_MINUTES)
    for kind, value, limit in _keys(username, ip):
        with transaction.atomic():
            throttle, _created = (
                LoginThrottle.objects.select_for_update().get_or_create(
                    kind=kind,
                    value=value,
                    defaults={"first_failure_at": now, "last_failure_at": now},
                )
            )
            if throttle.first_failure_at < now - window:
                throttle.failures = 0
                throttle.first_failure_at = now
            throttle.failures += 1
            throttle.last_failure_at = now
            if throttle.failures >= limit and not throttle.is_locked(now):
                throttle.locked_until = now + lockout
                logger.warning(
                    "Login throttle %s locked for %s minutes after %s failures",
                    throttle.pk,
                    settings.MESHLINE_LOGIN_LOCKOUT_MINUTES,
                    throttle.failures,
                )
            throttle.save()


def clear_failures(username: str) -> None:
    """Forget the failures of a user name after a successful login.

    The IP's count stays, so that one valid login does not reset a guess run
    from the same address."""
    LoginThrottle.objects.filter(
        kind=LoginThrottle.Kind.USERNAME, value=username.lower()[:150]
    ).exclude(locked_until__gt=timezone.now()).delete()


def unlock(throttles) -> int:
    """Lift lock-outs and reset their counts; return how many were lifted."""
    return throttles.update(locked_until=None, failures=0)


class LockoutModelBackend(ModelBackend):
    """``ModelBackend`` that rejects locked-out logins and counts failures."""

    def authenticate(self, request, username=None, password=None, **kwargs):
        if username is None:
            username = kwargs.get(self._username_field())
        ip = client_ip(request)
        blocking = locked_out(username or "", ip)
        if blocking is not None:
            logger.warning("Login rejected: throttle %s is locked", blocking.pk)
            return None
        user = super().authenticate(
            request, username=username, password=password, **kwargs
        )
        if user is None:
            if username is not None:
                record_failure(username, ip)
            return None
        clear_failures(username)
        return user

    @staticmethod
    def _username_field() -> str:
        from django.contrib.auth import get_user_model

        return get_user_model().USERNAME_FIELD
