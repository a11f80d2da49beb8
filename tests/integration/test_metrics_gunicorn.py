"""gennet_sync.metrics under a real gunicorn with 2 workers, one recycled: the totals
scraped from any worker equal the calls made to all of them."""

from __future__ import annotations

import math
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from examples.launcher import ServiceProcess
from tests.support.metrics_app import BOOT_BREAKER_NAME, BREAKER_NAME, TEMPORARY_BREAKER_NAME

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

# Each worker is recycled after this many requests (max_requests, no jitter).
MAX_REQUESTS = 40
FLUSH_INTERVAL = 0.5
# The documented bound: another worker's breaker counts reach the scrape within
# one flush interval; a generous multiple so a loaded machine does not fail it.
SETTLE_SECONDS = 30.0


@pytest.fixture
def service(tmp_path: Path) -> Iterator[ServiceProcess]:
    with ServiceProcess(
        "metrics",
        "tests.support.metrics_app:create_app()",
        tmp_path,
        workers=2,
        threads=2,
        env={
            "GUNICORN_MAX_REQUESTS": str(MAX_REQUESTS),
            "GUNICORN_MAX_REQUESTS_JITTER": "0",
            "GENNET_METRICS_FLUSH_INTERVAL": str(FLUSH_INTERVAL),
        },
    ) as process:
        yield process


def scrape(base_url: str) -> Samples:
    # A new connection each time, so either worker may answer.
    response = requests.get(f"{base_url}/metrics", timeout=10, headers={"Connection": "close"})
    assert response.status_code == 200, response.text
    samples: Samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every series of ``name`` with these labels (and any others, e.g. pid)."""
    wanted = set(labels.items())
    return sum(v for (sample, found), v in samples.items() if sample == name and wanted <= found)


def live_workers(arbiter_pid: int) -> set[int]:
    children = Path(f"/proc/{arbiter_pid}/task/{arbiter_pid}/children").read_text()
    return {int(pid) for pid in children.split()}


def test_totals_from_any_worker_equal_the_calls_made_to_all(service: ServiceProcess) -> None:
    base = service.base_url
    pids: set[int] = set()
    expected = {"ok": 0, "conflict": 0, "success": 0, "failure": 0}
    with requests.Session() as client:
        for round_ in range(60):
            # Closed connections: gunicorn's gthread workers take turns.
            headers = {"Connection": "close"}
            pids.add(client.get(f"{base}/pid", headers=headers, timeout=10).json()["pid"])
            assert client.get(f"{base}/ok", headers=headers, timeout=10).status_code == 200
            expected["ok"] += 1
            if round_ % 3 == 0:
                answer = client.post(f"{base}/conflict", headers=headers, timeout=10)
                assert answer.json()["error"]["code"] == "CONFLICT"
                expected["conflict"] += 1
            outcome = "failure" if round_ % 4 == 0 else "success"
            client.get(f"{base}/breaker/{outcome}", headers=headers, timeout=10)
            expected[outcome] += 1
    # 60 rounds of 3-4 requests, recycled every 40: more workers served than the 2 alive.
    assert len(pids) > 2, f"no worker was recycled: {pids}"

    def settled(samples: Samples) -> bool:
        # Another worker's breakers and requests show within one flush interval.
        return (
            total(samples, "gennet_breaker_calls_total", breaker=BREAKER_NAME, outcome="success")
            == expected["success"]
            and total(
                samples, "gennet_breaker_calls_total", breaker=BREAKER_NAME, outcome="failure"
            )
            == expected["failure"]
            and total(samples, "gennet_http_requests_total", route="/ok") == expected["ok"]
            and total(samples, "gennet_http_requests_total", route="/pid") == 60
        )

    deadline = time.monotonic() + SETTLE_SECONDS
    samples = scrape(base)
    while not settled(samples) and time.monotonic() < deadline:
        time.sleep(FLUSH_INTERVAL)
        samples = scrape(base)
    # Every scrape now (whichever worker answers) gives the exact totals.
    for _ in range(6):
        # A scrape counts towards max_requests: a worker may be recycled meanwhile.
        alive = live_workers(service.pid or 0)
        samples = scrape(base)
        alive |= live_workers(service.pid or 0)
        calls = "gennet_breaker_calls_total"
        assert total(samples, calls, breaker=BREAKER_NAME, outcome="success") == expected["success"]
        assert total(samples, calls, breaker=BREAKER_NAME, outcome="failure") == expected["failure"]
        assert total(samples, calls, breaker=BREAKER_NAME, outcome="rejected") == 0
        assert (
            total(samples, "gennet_http_requests_total", method="GET", route="/ok", status="200")
            == expected["ok"]
        )
        assert (
            total(
                samples,
                "gennet_http_errors_total",
                code="CONFLICT",
                status="409",
                route="/conflict",
            )
            == expected["conflict"]
        )
        assert total(samples, "gennet_http_requests_total", route="/pid") == 60
        assert total(samples, "gennet_http_requests_total", route="/metrics") == 0
        # Per-worker gauges: only the live workers, not the recycled ones.
        state_pids = {
            dict(labels)["pid"]
            for (name, labels) in samples
            if name == "gennet_breaker_state" and ("state", "closed") in labels
        }
        assert {int(pid) for pid in state_pids} <= alive
        assert state_pids, "no worker reported its breaker's state"


def test_a_restarted_service_starts_from_zero_in_its_own_directory(tmp_path: Path) -> None:
    directory = tmp_path / "prometheus"
    with ServiceProcess(
        "metrics-restart",
        "tests.support.metrics_app:create_app()",
        tmp_path,
        workers=2,
        env={"PROMETHEUS_MULTIPROC_DIR": str(directory)},
    ) as service:
        base = service.base_url
        for _ in range(3):
            requests.get(f"{base}/ok", timeout=10, headers={"Connection": "close"})
        # The worker that served one may not be the one answering: within an interval.
        deadline = time.monotonic() + SETTLE_SECONDS
        while total(scrape(base), "gennet_http_requests_total", route="/ok") != 3:
            assert time.monotonic() < deadline, "the requests never showed in the totals"
            time.sleep(0.1)
        assert list(directory.glob("counter_*.db"))
        service.restart()
        assert total(scrape(base), "gennet_http_requests_total", route="/ok") == 0
    assert directory.is_dir()  # the operator's directory is kept, only emptied at start


def test_a_killed_worker_keeps_what_it_had_copied(tmp_path: Path) -> None:
    with ServiceProcess(
        "metrics-kill",
        "tests.support.metrics_app:create_app()",
        tmp_path,
        workers=2,
        env={"GENNET_METRICS_FLUSH_INTERVAL": str(FLUSH_INTERVAL), "GUNICORN_MAX_REQUESTS": "0"},
    ) as service:
        base = service.base_url
        for _ in range(30):
            headers = {"Connection": "close"}
            requests.get(f"{base}/breaker/success", headers=headers, timeout=10)
        time.sleep(4 * FLUSH_INTERVAL)  # every worker has copied its breaker's counts
        victim = next(iter(live_workers(service.pid or 0)))
        os.kill(victim, signal.SIGKILL)  # no worker_exit, no atexit: what it copied stays
        deadline = time.monotonic() + SETTLE_SECONDS
        while victim in live_workers(service.pid or 0) or len(live_workers(service.pid or 0)) < 2:
            assert time.monotonic() < deadline, "gunicorn did not replace the killed worker"
            time.sleep(0.1)
        samples = scrape(base)
        calls = "gennet_breaker_calls_total"
        assert total(samples, calls, breaker=BREAKER_NAME, outcome="success") == 30
        states = [labels for (name, labels) in samples if name == "gennet_breaker_state"]
        assert all(("pid", str(victim)) not in labels for labels in states)


def test_workers_forked_from_a_preloaded_master_do_not_export_its_counts_again(
    tmp_path: Path,
) -> None:
    # examples/gunicorn.conf.py preloads the app: the master made one failing call
    # (which opened the breaker) while loading it; 10 and more workers are forked from it.
    with ServiceProcess(
        "metrics-preload",
        "tests.support.metrics_app:create_app()",
        tmp_path,
        workers=2,
        env={
            "GUNICORN_PRELOAD": "true",
            "GUNICORN_MAX_REQUESTS": "8",
            "GUNICORN_MAX_REQUESTS_JITTER": "0",
            "GENNET_METRICS_FLUSH_INTERVAL": str(FLUSH_INTERVAL),
            "METRICS_APP_BOOT_FAILURE": "1",
        },
    ) as service:
        base = service.base_url
        pids: set[int] = set()
        for _ in range(80):
            headers = {"Connection": "close"}
            pids.add(requests.get(f"{base}/pid", headers=headers, timeout=10).json()["pid"])
        assert len(pids) >= 6, f"too few workers were recycled: {pids}"
        time.sleep(4 * FLUSH_INTERVAL)  # every live worker has copied its counts
        samples = scrape(base)
        calls = "gennet_breaker_calls_total"
        assert total(samples, calls, breaker=BOOT_BREAKER_NAME, outcome="failure") == 1
        transitions = "gennet_breaker_transitions_total"
        opened = total(
            samples, transitions, breaker=BOOT_BREAKER_NAME, from_state="closed", to_state="open"
        )
        assert opened == 1


def test_a_gone_breakers_state_matches_no_alert(tmp_path: Path) -> None:
    # prometheus-client cannot remove a label set from its multiprocess files: the
    # gauges of a breaker that is gone turn NaN, which no comparison matches.
    with ServiceProcess(
        "metrics-gone",
        "tests.support.metrics_app:create_app()",
        tmp_path,
        workers=1,
        env={"GENNET_METRICS_FLUSH_INTERVAL": str(FLUSH_INTERVAL)},
    ) as service:
        base = service.base_url
        assert requests.post(f"{base}/temporary", timeout=10).json() == {"state": "open"}
        samples = scrape(base)
        state = "gennet_breaker_state"
        assert total(samples, state, breaker=TEMPORARY_BREAKER_NAME, state="open") == 1
        assert requests.delete(f"{base}/temporary", timeout=10).json() == {"left": 0}
        samples = scrape(base)
        values = [
            value
            for (name, labels), value in samples.items()
            if name == state and ("breaker", TEMPORARY_BREAKER_NAME) in labels
        ]
        assert len(values) == 3
        assert all(math.isnan(value) for value in values), values
        assert total(samples, state, breaker=BREAKER_NAME, state="closed") == 1
