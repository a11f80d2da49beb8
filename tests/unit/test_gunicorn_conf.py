"""gennet_sync.gunicorn_conf's hooks, called as gunicorn calls them (no process started)."""

from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from gennet_sync import gunicorn_conf


@pytest.fixture(autouse=True)
def _environment_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    # The module sets these in os.environ itself: recorded here, so that they are
    # restored (removed) after each test, whatever it set.
    for name in ("PROMETHEUS_MULTIPROC_DIR", "GENNET_METRICS_DIR_MADE"):
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)


@pytest.fixture
def directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "prometheus"
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(path))
    return path


def test_an_operators_directory_is_made_and_kept(directory: Path) -> None:
    assert gunicorn_conf.metrics_directory() == directory
    assert directory.is_dir()
    gunicorn_conf.on_exit(SimpleNamespace())
    assert directory.is_dir()  # not ours to remove


def test_without_one_a_fresh_directory_is_made_and_removed_at_exit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    made = gunicorn_conf.metrics_directory()
    assert os.environ["PROMETHEUS_MULTIPROC_DIR"] == str(made)
    assert made.is_dir()
    assert gunicorn_conf.metrics_directory() == made  # imported again (a reload): the same
    gunicorn_conf.on_exit(SimpleNamespace())
    assert not made.exists()


def test_the_arbiter_start_removes_only_the_value_files(directory: Path) -> None:
    directory.mkdir()
    (directory / "counter_123.db").write_bytes(b"old")
    (directory / "gauge_liveall_123.db").write_bytes(b"old")
    (directory / "README").write_text("someone's file")
    gunicorn_conf.on_starting(SimpleNamespace())
    assert sorted(p.name for p in directory.iterdir()) == ["README"]


def test_a_dead_workers_live_gauges_go_and_its_counters_stay(directory: Path) -> None:
    directory.mkdir()
    for name in (
        "counter_7.db",
        "histogram_7.db",
        "gauge_liveall_7.db",
        "gauge_livemin_7.db",
        "gauge_livemostrecent_7.db",
        "gauge_liveall_8.db",
    ):
        (directory / name).write_bytes(b"")
    gunicorn_conf.child_exit(SimpleNamespace(), SimpleNamespace(pid=7))
    assert sorted(p.name for p in directory.iterdir()) == [
        "counter_7.db",
        "gauge_liveall_8.db",
        "histogram_7.db",
    ]


def test_imported_outside_gunicorn_it_leaves_the_environment_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delitem(sys.modules, "gunicorn.arbiter", raising=False)
    importlib.reload(gunicorn_conf)
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def test_read_by_gunicorn_it_sets_the_directory_before_the_app_loads(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR")
    monkeypatch.setitem(sys.modules, "gunicorn.arbiter", SimpleNamespace())
    importlib.reload(gunicorn_conf)
    made = Path(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    assert made.is_dir()
    gunicorn_conf.on_exit(SimpleNamespace())
    assert not made.exists()


def test_usable_as_a_gunicorn_config_module() -> None:
    # gunicorn -c python:gennet_sync.gunicorn_conf reads the module's hook names.
    module = importlib.import_module("gennet_sync.gunicorn_conf")
    for hook in ("on_starting", "post_fork", "worker_exit", "child_exit", "on_exit"):
        assert callable(getattr(module, hook))


def test_the_example_config_uses_these_hooks() -> None:
    path = Path(__file__).resolve().parents[2] / "examples" / "gunicorn.conf.py"
    namespace: dict[str, object] = {}
    exec(compile(path.read_text(), str(path), "exec"), namespace)  # as gunicorn loads it
    for hook in ("on_starting", "worker_exit", "child_exit", "on_exit"):
        assert namespace[hook] is getattr(gunicorn_conf, hook)


def test_a_directory_without_room_for_the_workers_refuses_to_start(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A 64 KiB tmpfs: each worker would die of SIGBUS at its first request.
    directory.mkdir()
    usage = SimpleNamespace(total=64 * 1024, used=0, free=64 * 1024)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage)
    with pytest.raises(
        RuntimeError, match=r"has 64 KiB free; the metrics of 4 workers need 25 MiB"
    ):
        gunicorn_conf.on_starting(SimpleNamespace(num_workers=4))
    usage.free = 25 * 2**20
    gunicorn_conf.on_starting(SimpleNamespace(num_workers=4))  # just enough
