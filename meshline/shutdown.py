"""Graceful stop of a django-q2 cluster on SIGTERM or SIGINT.

Two faults of django-q2 1.11 kept a signalled ``qcluster`` from stopping
cleanly:

- Its sentinel process resets SIGTERM to the default action, and the pusher,
  the monitor and the workers it forks inherit that. A SIGTERM sent to the
  whole process group (systemd's default ``KillMode=control-group``) killed
  them at once. The killed sentinel was sleeping in ``stop_event.wait()``, and
  the ``qcluster`` process then blocked for ever in ``stop_event.set()``: a
  ``multiprocessing`` condition's ``notify_all`` waits for every sleeper to
  wake, and a dead one never does. The busy worker, orphaned, blocked on the
  task queue after its task.
- A SIGTERM sent to the ``qcluster`` process alone (``kill PID``, Docker)
  stops the sentinel in order, but the workers get no signal. A worker in
  the middle of ``dispatch_due`` kept claiming and sending commands until
  the outbox was empty, so the stop took as long as the backlog.

Meshline's ``qcluster`` command (``meshline/management/commands/qcluster.py``)
fixes both. It creates the shared stop flag below before it forks, and it
blocks SIGTERM while it starts the cluster, so every process of the cluster
inherits the blocked signal and only the ``qcluster`` process acts on it. On
SIGTERM or SIGINT that process sets the flag, then stops the cluster through
django-q2. The dispatcher checks ``stop_requested()`` before each command: the
command in flight finishes, and the claimed commands not yet started go back
to the outbox. The workers then take the poison pills that django-q2 sends and
exit, and the monitor saves their task results.
"""

import ctypes
import logging
import multiprocessing
import signal
import threading

logger = logging.getLogger(__name__)

# Set in this process only, by tests and by code that stops a dispatcher it
# runs itself.
_stop = threading.Event()
# Shared by every process that ``qcluster`` forks; None outside a cluster.
# A raw value needs no lock, so a process killed while reading it cannot
# leave a lock held.
_cluster_stop = None


def stop_requested() -> bool:
    """Return whether this process or its cluster is stopping."""
    return _stop.is_set() or bool(_cluster_stop is not None and _cluster_stop.value)


def request_stop() -> None:
    _stop.set()


def clear_stop() -> None:
    _stop.clear()


def create_cluster_stop_flag() -> None:
    """Create the flag that processes forked from this one share; call it before
    the cluster forks."""
    global _cluster_stop
    _cluster_stop = multiprocessing.RawValue(ctypes.c_bool, False)


def request_cluster_stop() -> None:
    """Tell every process of this cluster to stop after its current command."""
    if _cluster_stop is None:
        raise RuntimeError("create_cluster_stop_flag() was not called before the fork.")
    _cluster_stop.value = True


def worker_started(**kwargs) -> None:
    """Let a worker receive SIGTERM again, and ignore it there.

    A worker inherits the blocked SIGTERM of the ``qcluster`` process. A
    program that a task runs would inherit a blocked or ignored signal even
    across ``exec``, but a Python handler is reset to the default action
    there. The ``qcluster`` process alone stops the cluster, so a SIGTERM sent
    to one worker only is logged.
    """
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _log_worker_signal)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def _log_worker_signal(signum, frame) -> None:
    logger.info(
        "Worker received signal %s and goes on: only the qcluster process stops "
        "the cluster",
        signum,
    )


def connect_worker_signals() -> None:
    from django_q.signals import post_spawn

    post_spawn.connect(worker_started, dispatch_uid="meshline-worker-started")
