"""A one-screen summary of what services saw, read back from their ``/metrics``.

The demo ends with it; it works on any gennet_sync services::

    summary = MetricsSummary.scrape({"workflow": "http://127.0.0.1:8003"})
    print("\\n".join(summary.lines()))

Under gunicorn every worker answers with the totals of all of them (see
``docs/metrics.md``); the breakers' counts reach the metrics within one flush
interval, so :func:`MetricsSummary.scrape` is best called that long after the
last call (:data:`SETTLE_SECONDS`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final

import requests
from prometheus_client.parser import text_string_to_metric_families

__all__ = ["SETTLE_SECONDS", "MetricsSummary"]

#: Longer than gennet_sync's default flush interval (1 s): every worker's breaker
#: counts are in the metrics after it.
SETTLE_SECONDS: Final = 1.5


@dataclass
class MetricsSummary:
    """Totals by the labels an operator reads first, over every scraped service.

    Attributes:
        errors: Error envelopes returned, by ``(service, code, status)``.
        downstream_errors: Downstream error codes seen, by ``(service, called, code)``.
        refused: Calls refused or failed without an answer, by ``(service, called, error type)``.
        transitions: Breaker state changes, by ``(service, breaker, from, to)``,
            summed over the workers.
    """

    errors: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    downstream_errors: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    refused: Counter[tuple[str, str, str]] = field(default_factory=Counter)
    transitions: Counter[tuple[str, str, str, str]] = field(default_factory=Counter)

    @classmethod
    def scrape(cls, services: Mapping[str, str], timeout: float = 10.0) -> MetricsSummary:
        """Read ``GET /metrics`` of each service (name to base URL)."""
        summary = cls()
        for service, base_url in services.items():
            response = requests.get(f"{base_url}/metrics", timeout=timeout)
            response.raise_for_status()
            summary.add(service, response.text)
        return summary

    def add(self, service: str, exposition: str) -> None:
        """Count the samples of one service's ``/metrics`` text."""
        for family in text_string_to_metric_families(exposition):
            for sample in family.samples:
                labels, value = sample.labels, int(sample.value)
                if not value:
                    continue
                if sample.name == "gennet_http_errors_total":
                    self.errors[service, labels["code"], labels["status"]] += value
                elif sample.name == "gennet_client_downstream_errors_total":
                    self.downstream_errors[service, labels["service"], labels["code"]] += value
                elif (
                    sample.name == "gennet_client_requests_total"
                    and not labels["status"][0].isdigit()
                ):
                    self.refused[service, labels["service"], labels["status"]] += value
                elif sample.name == "gennet_breaker_transitions_total":
                    key = (service, labels["breaker"], labels["from_state"], labels["to_state"])
                    self.transitions[key] += value

    def lines(self) -> list[str]:
        """The summary as lines of text, one table after another."""
        lines = ["error envelopes returned (service, code, status: count)"]
        lines += [
            f"  {service:<12} {code:<24} {status}: {count}"
            for (service, code, status), count in sorted(self.errors.items())
        ] or ["  none"]
        lines.append("downstream answers and refusals (caller -> service, code or error: count)")
        seen = {**self.downstream_errors, **self.refused}
        lines += [
            f"  {caller} -> {called:<22} {what}: {count}"
            for (caller, called, what), count in sorted(seen.items())
        ] or ["  none"]
        lines.append("breaker transitions, all workers (service, breaker: from -> to: count)")
        lines += [
            f"  {service:<12} {breaker}: {old} -> {new}: {count}"
            for (service, breaker, old, new), count in sorted(self.transitions.items())
        ] or ["  none"]
        return lines
