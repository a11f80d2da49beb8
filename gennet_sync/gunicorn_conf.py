"""gunicorn hooks for gennet_sync: Prometheus metrics right across workers, tracing per worker.

Use it as the whole config, ``gunicorn -c python:gennet_sync.gunicorn_conf app:app``,
or import its hooks into yours::

    # gunicorn.conf.py
    from gennet_sync.gunicorn_conf import child_exit, on_exit, on_starting, post_fork, worker_exit

(call them from your own hooks of the same name if you have some).  Read by
gunicorn, it sets ``PROMETHEUS_MULTIPROC_DIR`` (a fresh directory unless already
set), so prometheus-client, imported later by the app, writes every worker's
values there; see ``docs/metrics.md``.  Its ``post_fork`` and ``worker_exit`` also
set the OpenTelemetry SDK up in each worker after the fork and export the
worker's last spans as it exits (``docs/tracing.md``); without the SDK (or without
``OTEL_EXPORTER_OTLP_ENDPOINT``) that part does nothing.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Final

from gennet_sync.tracing import gunicorn_post_fork, gunicorn_worker_exit

__all__ = [
    "BYTES_PER_PROCESS",
    "MULTIPROC_DIR_VARIABLE",
    "child_exit",
    "metrics_directory",
    "metrics_post_fork",
    "on_exit",
    "on_starting",
    "post_fork",
    "worker_exit",
]

#: The environment variable prometheus-client reads, when it is imported, to
#: write each process's values to files in that directory.
MULTIPROC_DIR_VARIABLE: Final = "PROMETHEUS_MULTIPROC_DIR"
# Set when this module made the directory (and so removes it at exit).
_MADE_DIRECTORY_VARIABLE: Final = "GENNET_METRICS_DIR_MADE"
#: Free space the directory needs per process (each worker, and the arbiter):
#: prometheus-client maps a file per kind of metric (counters, histograms, three
#: kinds of live gauges), grown 1 MiB at a time.  A write into a mapped page the
#: filesystem has no room for kills the process with SIGBUS, with no message.
BYTES_PER_PROCESS: Final = 5 * 2**20


def metrics_directory() -> Path:
    """The multiprocess directory, made (with ``PROMETHEUS_MULTIPROC_DIR`` set) if need be.

    A directory per service: two services sharing one would add up each other's
    series.
    """
    configured = os.environ.get(MULTIPROC_DIR_VARIABLE)
    if configured:
        path = Path(configured)
        path.mkdir(parents=True, exist_ok=True)
        return path
    path = Path(tempfile.mkdtemp(prefix="gennet-metrics-"))
    os.environ[MULTIPROC_DIR_VARIABLE] = str(path)
    os.environ[_MADE_DIRECTORY_VARIABLE] = str(path)
    return path


def _loaded_by_gunicorn() -> bool:
    """Whether gunicorn is reading its settings (so this import is in its arbiter)."""
    return "gunicorn.arbiter" in sys.modules


# At import by gunicorn: before the app (and prometheus-client) is loaded.  Any
# other import (a test, a tool reading the settings) leaves the environment alone.
if _loaded_by_gunicorn():
    metrics_directory()


def on_starting(server: Any) -> None:
    """The arbiter starts: forget the values of an earlier run of this service.

    Only the ``*.db`` files prometheus-client writes are removed.  A reload
    (``HUP``) does not call it, so the totals carry on across reloads.

    Raises:
        RuntimeError: The directory's filesystem has less than
            :data:`BYTES_PER_PROCESS` free for each worker and the arbiter: the
            workers would die of SIGBUS at their first request.
    """
    directory = metrics_directory()
    for stale in directory.glob("*.db"):
        stale.unlink(missing_ok=True)
    processes = int(getattr(server, "num_workers", 1) or 1) + 1
    needed = BYTES_PER_PROCESS * processes
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise RuntimeError(
            f"{MULTIPROC_DIR_VARIABLE}={directory} has {free // 1024} KiB free; the metrics "
            f"of {processes - 1} workers need {needed // 2**20} MiB (a full directory kills "
            "a worker with SIGBUS): free some space or point the variable elsewhere"
        )


def metrics_post_fork(server: Any, worker: Any) -> None:
    """The metrics' part of :func:`post_fork`: nothing to do in the worker yet.

    The worker starts its own flush thread at its first request; kept as a named
    step so a config that replaces :func:`post_fork` can still call it.
    """


def post_fork(server: Any, worker: Any) -> None:
    """A worker was forked: the metrics' step, then tracing set up in this worker."""
    metrics_post_fork(server, worker)
    gunicorn_post_fork(server, worker)


def worker_exit(server: Any, worker: Any) -> None:
    """In the worker, as it exits: the breakers' last counts copied, the last spans sent."""
    metrics = sys.modules.get("gennet_sync.metrics")
    if metrics is not None:  # the app uses metrics (an app without them needs no extra)
        metrics.flush()
    gunicorn_worker_exit(server, worker)


def child_exit(server: Any, worker: Any) -> None:
    """In the arbiter, once a worker is gone: drop its live gauges (state, retry time)."""
    try:  # imported here, after the directory variable is set above
        from prometheus_client import multiprocess  # noqa: PLC0415
    except ImportError:  # no [prometheus] extra: no metrics to keep right
        return

    multiprocess.mark_process_dead(  # type: ignore[no-untyped-call]
        worker.pid, str(metrics_directory())
    )


def on_exit(server: Any) -> None:
    """The arbiter exits: remove the directory if this module made it."""
    made = os.environ.get(_MADE_DIRECTORY_VARIABLE)
    if made and made == os.environ.get(MULTIPROC_DIR_VARIABLE):
        shutil.rmtree(made, ignore_errors=True)
