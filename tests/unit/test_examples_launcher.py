"""The gunicorn settings file the launcher starts every service with."""

from __future__ import annotations

import os
import runpy

import pytest

from examples.launcher import GUNICORN_CONFIG


def test_gunicorn_config_reads_its_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GUNICORN_WORKERS", "3")
    monkeypatch.setenv("GUNICORN_THREADS", "16")
    monkeypatch.setenv("GUNICORN_PRELOAD", "false")
    settings = runpy.run_path(str(GUNICORN_CONFIG))
    assert settings["workers"] == 3
    assert settings["threads"] == 16
    assert settings["preload_app"] is False
    assert settings["worker_class"] == "gthread"
    assert settings["control_socket_disable"] is True


def test_gunicorn_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("GUNICORN_"):
            monkeypatch.delenv(name)
    settings = runpy.run_path(str(GUNICORN_CONFIG))
    assert settings["workers"] == (os.cpu_count() or 1) * 2 + 1
    assert settings["preload_app"] is True
    assert settings["timeout"] > settings["graceful_timeout"]
    assert callable(settings["worker_abort"])
