"""Graceful stop of a django-q2 worker process on SIGTERM.

django-q2 1.11 leaves SIGTERM at its default action in the worker processes
(the sentinel sets ``SIG_DFL`` before forking them), so a SIGTERM sent to the
whole process group, as systemd's default ``KillMode=control-group`` does,
would kill a worker in the middle of an ERP call. When a worker process
starts, ``install_stop_handler`` replaces that action: an idle worker exits at
once, and a busy one sets the stop flag, which the dispatcher checks before
each command, so the command in flight finishes and the claimed commands not
yet started are released to the queue.
"""

import logging
import signal
import threading

logger = logging.getLogger(__name__)

_stop = threading.Event()
_busy = threading.Event()


def stop_requested() -> bool:
    return _stop.is_set()


def request_stop(signum=None, frame=None) -> None:
    """Ask the dispatcher to stop; exit at once when no task is running."""
    _stop.set()
    logger.info("Worker stop requested by signal %s", signum)
    if signum is not None and not _busy.is_set():
        raise SystemExit(0)


def clear_stop() -> None:
    _stop.clear()


def install_stop_handler(**kwargs) -> None:
    """Handle SIGTERM in this process with ``request_stop``; django-q2 calls it
    through its ``post_spawn`` signal in every new worker process."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, request_stop)


def mark_busy(**kwargs) -> None:
    _busy.set()


def mark_idle(**kwargs) -> None:
    _busy.clear()


def connect_worker_signals() -> None:
    from django_q.signals import post_execute_in_worker, post_spawn, pre_execute

    post_spawn.connect(install_stop_handler, dispatch_uid="meshline-stop-handler")
    pre_execute.connect(mark_busy, dispatch_uid="meshline-busy")
    post_execute_in_worker.connect(mark_idle, dispatch_uid="meshline-idle")
