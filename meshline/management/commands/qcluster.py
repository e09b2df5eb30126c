"""Start a django-q2 cluster that stops gracefully on SIGTERM and SIGINT.

This command takes the place of django-q2's ``qcluster`` because ``meshline``
comes before ``django_q`` in ``INSTALLED_APPS``, and it takes the same
options. ``meshline/shutdown.py`` explains what it changes and why.
"""

import logging
import os
import signal

from django import db
from django.conf import settings
from django_q.cluster import Cluster
from django_q.management.commands import qcluster

from meshline import shutdown

logger = logging.getLogger(__name__)


class GracefulCluster(Cluster):
    """A cluster whose child processes leave SIGTERM to this process."""

    def __init__(self, *args, **kwargs):
        self.stopping = False
        super().__init__(*args, **kwargs)

    def start(self) -> int:
        # A forked process inherits the signal mask of the thread that forks
        # it, so the sentinel and every process it forks start with SIGTERM
        # blocked. A SIGTERM that arrives while the cluster starts is handled
        # here once start() returns.
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            return super().start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)

    def stop(self) -> bool:
        shutdown.request_cluster_stop()
        if self.stopping:
            return False
        self.stopping = True
        return super().stop()

    def sig_handler(self, signum, frame):
        if self.stopping:
            logger.info("qcluster %s is already stopping; signal %s ignored", self.pid, signum)
            return
        logger.info(
            "qcluster %s received signal %s: stopping after the commands in flight",
            self.pid,
            signum,
        )
        super().sig_handler(signum, frame)


class Command(qcluster.Command):
    def handle(self, *args, **options):
        # django-q2 needs the key to sign task messages; fail before forking.
        settings.SECRET_KEY
        if options.get("cluster_name"):
            os.environ["Q_CLUSTER_NAME"] = options["cluster_name"]
        shutdown.create_cluster_stop_flag()
        # A connection opened here would be shared with the forked processes,
        # and the first of them to close it would break it for the others.
        db.connections.close_all()
        cluster = GracefulCluster()
        cluster.start()
        if options.get("run_once"):
            cluster.stop()
