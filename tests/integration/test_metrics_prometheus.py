"""A real Prometheus scrapes the example services under gunicorn: after a scripted
run, PromQL totals equal the calls made; the shipped rules load and the shipped
dashboard's queries run."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from examples.launcher import EXAMPLES_DIR, PrometheusProcess, ServiceProcess
from tests.support.qualitative import OSCILLATOR

MONITORING = EXAMPLES_DIR / "monitoring"
VERIFY = "/api/v1/workflows/verify"
BREAKER = "qualitative-service"
VALID_CALLS = 12
INVALID_CALLS = 6
INVALID = "VALIDATION_ERROR"
# Long enough for a few scrapes after the breakers' counts are flushed (1 s).
SETTLE_SECONDS = 60.0


@dataclass
class Stack:
    workflow: ServiceProcess
    qualitative: ServiceProcess
    prometheus: PrometheusProcess

    def query(self, promql: str) -> list[dict[str, object]]:
        response = requests.get(
            f"{self.prometheus.base_url}/api/v1/query", params={"query": promql}, timeout=10
        )
        body = response.json()
        assert body["status"] == "success", (promql, body)
        result: list[dict[str, object]] = body["data"]["result"]
        return result

    def scalar(self, promql: str) -> float | None:
        result = self.query(promql)
        if not result:
            return None
        assert len(result) == 1, (promql, result)
        value = result[0]["value"]
        assert isinstance(value, list)
        return float(value[1])


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    qualitative = ServiceProcess(
        "qualitative", "examples.qualitative_service:create_app()", tmp_path, workers=2
    )
    workflow = ServiceProcess(
        "workflow",
        "examples.workflow_service:create_app()",
        tmp_path,
        workers=2,
        env={
            "QUALITATIVE_URL": qualitative.base_url,
            "QUALITATIVE_SERVICE_NAME": BREAKER,
            "CIRCUIT_BREAKER_THRESHOLD": "3",
            "CIRCUIT_BREAKER_TIMEOUT": "30",
            "GENNET_BREAKER_STORAGE": "",
            # Workers recycled during the run: Prometheus's scrapes count too.
            "GUNICORN_MAX_REQUESTS": "10",
            "GUNICORN_MAX_REQUESTS_JITTER": "0",
        },
    )
    with qualitative, workflow:
        prometheus = PrometheusProcess(
            tmp_path,
            {"workflow": [workflow.base_url], "qualitative": [qualitative.base_url]},
            rule_files=[MONITORING / "alerts.yml"],
        )
        with prometheus:
            yield Stack(workflow, qualitative, prometheus)


def run_script(stack: Stack) -> None:
    url = f"{stack.workflow.base_url}{VERIFY}"
    with requests.Session() as client:
        client.headers["Connection"] = "close"  # either worker may answer
        for _ in range(VALID_CALLS):
            answer = client.post(
                url, json={"network": OSCILLATOR, "formula": "AG(AF a)"}, timeout=30
            )
            assert answer.status_code == 200, answer.text
        for _ in range(INVALID_CALLS):
            answer = client.post(url, json={"network": OSCILLATOR, "formula": "AG(("}, timeout=30)
            assert answer.status_code == 422, answer.text
            assert answer.json()["error"]["code"] == "VALIDATION_ERROR"


def test_promql_totals_equal_the_calls_made(stack: Stack) -> None:
    run_script(stack)
    calls = VALID_CALLS + INVALID_CALLS
    wf, svc = 'job="workflow"', f'job="workflow",service="{BREAKER}"'
    expected = {
        f'sum(gennet_http_requests_total{{{wf},route="{VERIFY}"}})': calls,
        f'sum(gennet_http_requests_total{{{wf},route="{VERIFY}",status="200"}})': VALID_CALLS,
        f'sum(gennet_http_errors_total{{{wf},code="{INVALID}",status="422"}})': INVALID_CALLS,
        'sum(gennet_http_requests_total{job="qualitative",route="/ctl/verify"})': calls,
        f'sum(gennet_http_errors_total{{job="qualitative",code="{INVALID}"}})': INVALID_CALLS,
        f'sum(gennet_client_requests_total{{{svc},status="200"}})': VALID_CALLS,
        f'sum(gennet_client_requests_total{{{svc},status="422"}})': INVALID_CALLS,
        f'sum(gennet_client_downstream_errors_total{{{svc},code="{INVALID}"}})': INVALID_CALLS,
        f"sum(gennet_client_request_duration_seconds_count{{{svc}}})": calls,
        # A 422 is the caller's mistake, not the service failing: successes for the breaker.
        f'sum(gennet_breaker_calls_total{{{wf},breaker="{BREAKER}",outcome="success"}})': calls,
        f'sum(gennet_breaker_calls_total{{{wf},breaker="{BREAKER}",outcome!="success"}})': 0,
    }

    def seen() -> dict[str, float | None]:
        return {promql: stack.scalar(promql) for promql in expected}

    deadline = time.monotonic() + SETTLE_SECONDS
    values = seen()
    while values != expected and time.monotonic() < deadline:
        time.sleep(1.0)
        values = seen()
    assert values == expected
    # More workers served than are alive: the recycled workers' counts are in the totals.
    booted = stack.workflow.log_path.read_text().count("Booting worker")
    assert booted > 2, f"no workflow worker was recycled ({booted} booted)"
    time.sleep(3)  # a few more scrapes, maybe of other (new) workers: the same totals
    assert seen() == expected


def test_the_shipped_rules_load_and_the_dashboard_queries_run(stack: Stack) -> None:
    run_script(stack)
    groups = requests.get(f"{stack.prometheus.base_url}/api/v1/rules", timeout=10).json()
    rules = {rule["name"]: rule for group in groups["data"]["groups"] for rule in group["rules"]}
    assert set(rules) == {
        "GennetBreakerOpen",
        "GennetErrorRateByCode",
        "GennetBreakerStorageDown",
        "GennetBreakerFlapping",
    }
    assert all(rule["health"] in ("ok", "unknown") for rule in rules.values()), rules
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert len(expressions) >= 10
    for expression in expressions:
        promql = expression.replace("$__rate_interval", "1m").replace('job=~"$job"', 'job=~".*"')
        stack.query(promql)  # asserts Prometheus accepts and evaluates it
    # The error-rate panel shows the workflow's VALIDATION_ERROR share once scraped.
    error_rate = (
        expressions[0].replace("$__rate_interval", "5m").replace('job=~"$job"', 'job="workflow"')
    )
    deadline = time.monotonic() + SETTLE_SECONDS
    while not stack.query(error_rate) and time.monotonic() < deadline:
        time.sleep(1.0)
    codes = {series["metric"]["code"] for series in stack.query(error_rate)}  # type: ignore[index]
    assert codes == {"VALIDATION_ERROR"}


def test_promtool_checks_and_tests_the_shipped_rules() -> None:
    checked = subprocess.run(
        ["promtool", "check", "rules", "alerts.yml"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "SUCCESS: 4 rules found" in checked.stdout
    tested = subprocess.run(
        ["promtool", "test", "rules", "alerts_test.yml"],
        cwd=MONITORING,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert tested.returncode == 0, tested.stdout + tested.stderr
