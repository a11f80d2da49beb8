"""Gunicorn settings for the example services, and a starting point for yours.

Used as ``gunicorn -c examples/gunicorn.conf.py 'examples.grn_service:create_app()'``.
Every setting can be overridden on the command line (``--bind``, ``--workers``...)
or through the ``GUNICORN_*`` environment variables read below, so one file
serves every service of a deployment.

Why these values, for services built with gennet_sync:

- ``worker_class = "gthread"``: a service that calls other services spends its
  time waiting on sockets; threads let one worker wait on several calls.  The
  breaker never holds its lock during a call, so threads do not queue behind
  it.  ``ServiceSession``'s connection pool is sized for these threads.
- ``preload_app = True``: the app is imported once in the master and forked, so
  workers start fast and share memory.  gennet_sync is fork-safe: breakers and
  sessions made before the fork start clean in every worker (no inherited lock,
  no shared socket).
- ``timeout``: longer than the slowest request (a CTL check stops at its
  ``CTL_TIME_LIMIT``, 20 s by default) plus the read timeout of downstream calls;
  a worker silent for longer is killed and restarted (``worker_abort`` logs where
  it hung).
- ``max_requests`` with jitter recycles workers gradually, bounding slow leaks.
- Breaker state is per worker process unless ``GENNET_BREAKER_STORAGE`` names a
  Redis server (``redis://host:6379/0``): then all workers on all hosts share it.
- Logs are JSON lines (``GENNET_LOG_FORMAT=text`` for text), each with the
  service (``GENNET_SERVICE_NAME``, else gunicorn's ``--name``), the request ID,
  the trace and span IDs, the level and the message: ``gennet_sync.log_config``.
- Tracing: when ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set (and the OpenTelemetry SDK
  and OTLP/HTTP exporter are installed), each worker sets the SDK up after it is
  forked, never the master, and exports its spans before it exits
  (``gennet_sync.gunicorn_conf.post_fork``).
- The hooks of ``gennet_sync.gunicorn_conf`` keep ``/metrics`` right across
  workers: importing it sets ``PROMETHEUS_MULTIPROC_DIR`` before the app loads.
"""

# ruff: noqa: N999  (gunicorn.conf.py is the name gunicorn looks for by default)
from __future__ import annotations

import multiprocessing
import os
import sys
import traceback
from typing import Any

from gennet_sync import gunicorn_conf
from gennet_sync.gunicorn_conf import child_exit, on_exit, on_starting, worker_exit
from gennet_sync.log_config import logging_config

# gunicorn reads hooks as names of this module; the four imported are gennet_sync's as they are.
__all__ = [
    "child_exit",
    "on_exit",
    "on_starting",
    "post_fork",
    "when_ready",
    "worker_abort",
    "worker_exit",
]


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if not value else int(value)


def _env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if not value else value.strip().lower() in ("1", "true", "yes", "on")


def _service_from_command_line() -> str | None:
    """gunicorn's ``--name`` / ``-n``: the service in log lines when nothing else names it."""
    arguments = sys.argv
    for index, argument in enumerate(arguments):
        if argument in ("--name", "-n") and index + 1 < len(arguments):
            return arguments[index + 1]
        if argument.startswith("--name="):
            return argument.partition("=")[2]
    return None


# -- server socket
bind = os.environ.get("GUNICORN_BIND", "127.0.0.1:8000")
backlog = _env_int("GUNICORN_BACKLOG", 2048)

# -- workers
workers = _env_int("GUNICORN_WORKERS", multiprocessing.cpu_count() * 2 + 1)
worker_class = os.environ.get("GUNICORN_WORKER_CLASS", "gthread")
threads = _env_int("GUNICORN_THREADS", 4)
preload_app = _env_bool("GUNICORN_PRELOAD", True)
timeout = _env_int("GUNICORN_TIMEOUT", 60)
graceful_timeout = _env_int("GUNICORN_GRACEFUL_TIMEOUT", 10)
keepalive = _env_int("GUNICORN_KEEPALIVE", 5)
max_requests = _env_int("GUNICORN_MAX_REQUESTS", 1000)
max_requests_jitter = _env_int("GUNICORN_MAX_REQUESTS_JITTER", 100)

# -- gunicorn >= 24's control socket defaults to one path per user
# ($HOME/.gunicorn/gunicorn.ctl), which several services on one host would fight
# over: off unless GUNICORN_CONTROL_SOCKET gives this service a path of its own.
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "")
control_socket_disable = not control_socket

# -- behind a proxy: trust X-Forwarded-* only from these addresses
forwarded_allow_ips = os.environ.get("GUNICORN_FORWARDED_ALLOW_IPS", "127.0.0.1")

# -- logging: to stderr, with the request ID gennet_sync puts on every response
accesslog = os.environ.get("GUNICORN_ACCESSLOG", "-")
errorlog = os.environ.get("GUNICORN_ERRORLOG", "-")
loglevel = os.environ.get("GUNICORN_LOGLEVEL", "info")
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms request_id=%({x-request-id}o)s'
logconfig_dict = logging_config(
    os.environ.get("GENNET_SERVICE_NAME") or _service_from_command_line(),
    level=loglevel.upper(),
    json_lines=os.environ.get("GENNET_LOG_FORMAT", "json").strip().lower() != "text",
)


# -- hooks


def when_ready(server: Any) -> None:
    """The master is listening: say where, and how breaker state is kept."""
    storage = os.environ.get("GENNET_BREAKER_STORAGE") or "memory (per worker process)"
    addresses = ", ".join(server.cfg.bind)
    server.log.info("%s ready on %s; breaker storage: %s", server.proc_name, addresses, storage)


def post_fork(server: Any, worker: Any) -> None:
    """A worker was forked from the (preloaded) master: tracing starts here, per worker."""
    server.log.info("worker %s forked", worker.pid)
    gunicorn_conf.post_fork(server, worker)


def worker_abort(worker: Any) -> None:
    """A worker missed its ``timeout`` (SIGABRT): log where every thread was stuck."""
    frames = sys._current_frames()
    for thread_id, frame in frames.items():
        stack = "".join(traceback.format_stack(frame))
        worker.log.warning("worker %s timed out; thread %s at:\n%s", worker.pid, thread_id, stack)
