"""The GRN service under real gunicorn workers."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from examples.launcher import ServiceProcess

COMPOSED = "caf\u00e9"  # é as one code point
DECOMPOSED = "cafe\u0301"  # e + combining acute accent: looks the same


@pytest.fixture
def grn_under_gunicorn(tmp_path: Path) -> Iterator[ServiceProcess]:
    service = ServiceProcess(
        "grn",
        "examples.grn_service:create_app()",
        tmp_path,
        workers=2,
        env={"GRN_DATABASE": str(tmp_path / "shared.sqlite3")},
    )
    with service:
        yield service


@pytest.mark.integration
def test_gunicorn_workers_share_one_database(grn_under_gunicorn: ServiceProcess) -> None:
    base = grn_under_gunicorn.base_url
    results: list[int] = []
    lock = threading.Lock()

    def post(index: int) -> None:
        with requests.Session() as session:
            # one connection per request, so both workers take writes
            body = {"name": f"n{index % 12}", "nodes": ["a", "b"]}
            status = session.post(
                f"{base}/api/v2/networks", json=body, headers={"Connection": "close"}, timeout=20
            ).status_code
        with lock:
            results.append(status)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    # every name written twice: exactly one of each pair wins, the other is a 409
    assert sorted(results) == [201] * 12 + [409] * 12

    with requests.Session() as session:
        names: list[str] = []
        url = f"{base}/api/v2/networks?limit=5"
        while url:
            page = session.get(url, headers={"Connection": "close"}, timeout=10).json()
            names += [item["name"] for item in page["items"]]
            url = f"{base}/api/v2/networks?limit=5&cursor={page['next']}" if page["next"] else ""
    assert sorted(names) == sorted(f"n{i}" for i in range(12))


@pytest.mark.integration
def test_under_gunicorn_the_two_forms_of_a_name_are_one_network(
    grn_under_gunicorn: ServiceProcess,
) -> None:
    url = f"{grn_under_gunicorn.base_url}/api/v2/networks"
    statuses = [
        requests.post(
            url, json={"name": name, "nodes": ["x"]}, headers={"Connection": "close"}, timeout=10
        ).status_code
        for name in (DECOMPOSED, COMPOSED)
    ]
    assert statuses == [201, 409]


@pytest.mark.integration
def test_under_gunicorn_half_a_million_unknown_keys_get_a_small_422(
    grn_under_gunicorn: ServiceProcess,
) -> None:
    keys = 500_000
    body = {"name": "n", "nodes": ["x"], **{f"key{i:07d}": 1 for i in range(keys)}}
    response = requests.post(
        f"{grn_under_gunicorn.base_url}/api/v2/networks", json=body, timeout=120
    )
    assert response.status_code == 422
    assert len(response.content) < 8 * 1024  # was about 16 MB of field errors
    metadata = response.json()["error"]["metadata"]
    assert len(metadata["fields"]) + metadata["fields_omitted"] == keys
