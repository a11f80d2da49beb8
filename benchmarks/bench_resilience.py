"""What deadlines, bulkheads, retry budgets and fallbacks cost a successful
call, and what the budget saves a failing service.

1. Cost: each policy's own work timed alone (CPU microseconds; for the
   fallback, ``LastGoodResponse.remember`` finding a fresh answer kept, and
   keeping one),
   then a local gunicorn app answering a small JSON document, called by
   ``ServiceSession`` with no policy, each policy alone and all four, taking
   turns call by call from one thread (the server pinned to one CPU, this
   process to the others).  Printed per client: CPU microseconds of this process
   per call (the client's own cost; the server runs in another process),
   wall-clock microseconds per call, and the median over rounds of the ratio to
   the session without policies in the same round.  Target: all four within 3%.
   The deadline clients enter a ``deadline_scope`` per call; the two ``bound``
   clients call in a context whose deadline was bound once, as the Flask side
   binds a request's (the calls of one request share one binding).
2. Refusals: how long a call refused by a full bulkhead, and one with no time
   left, takes (no network I/O).
3. Load amplification: a gunicorn app answering every request with 503, called
   ``--failing-calls`` times with 3 retries per call; the requests it receives
   from plain requests + urllib3 ``Retry``, from ``ServiceSession`` with its
   default budget, and with a 20% budget without the per-second minimum.

Run: ``python -m benchmarks.bench_resilience [--quick] [--rounds N] [--calls N]``
"""

from __future__ import annotations

import argparse
import contextlib
import contextvars
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import requests
from flask import Flask, Response, jsonify
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from examples.launcher import ServiceProcess
from gennet_sync import ServiceSession
from gennet_sync.bulkhead import Bulkhead
from gennet_sync.deadline import deadline_scope, forwarded_budget, time_left
from gennet_sync.exceptions import BulkheadFullError, DeadlineExceededError
from gennet_sync.fallback import LastGoodResponse
from gennet_sync.http_client import make_retry
from gennet_sync.retry_budget import RetryBudget, RetryBudgetConfig

PATH = "/networks/abc123"


def create_app() -> Flask:
    """The healthy downstream: one small JSON answer."""
    app = Flask("bench_resilience")
    payload = {"id": "abc123", "nodes": ["p", "q", "r"], "edges": [["p", "q"], ["q", "r"]]}

    @app.get(PATH)
    def network() -> Response:
        return jsonify(payload)

    return app


def failing_app() -> Flask:
    """Answers ``/x`` with 503, counting the requests; ``/count`` tells how many."""
    app = Flask("bench_resilience_failing")
    lock = threading.Lock()
    received = [0]

    @app.get("/x")
    def fail() -> tuple[Response, int]:
        with lock:
            received[0] += 1
        return jsonify(error="down"), 503

    @app.get("/count")
    def count() -> Response:
        return jsonify(received=received[0])

    return app


@contextmanager
def gunicorn_server(factory: str, *, pin: bool = False) -> Iterator[str]:
    """Run ``factory`` of this module under gunicorn (gthread, keep-alive); yield its URL.

    ``pin``: the server's processes on the last CPU, this one on the others, so
    that the client's figures do not change with where the scheduler puts them.
    """
    with (
        tempfile.TemporaryDirectory() as log_dir,
        ServiceProcess(
            f"bench_resilience_{factory}",
            f"benchmarks.bench_resilience:{factory}()",
            Path(log_dir),
            workers=1,
            threads=4,
            config=None,
            options=["--worker-class", "gthread", "--keep-alive", "60"],
            health_path=None,
        ) as service,
    ):
        cpus = sorted(os.sched_getaffinity(0))
        if pin and len(cpus) > 1 and service.pid is not None:
            for pid in _process_tree(service.pid):
                with contextlib.suppress(OSError):  # a process that just ended
                    os.sched_setaffinity(pid, {cpus[-1]})
            os.sched_setaffinity(0, set(cpus[:-1]))
        try:
            yield service.base_url
        finally:
            os.sched_setaffinity(0, set(cpus))


def _process_tree(root: int) -> list[int]:
    """``root`` and its descendants (a gunicorn master and its workers)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                # The parent's PID is the second field after the command's ")".
                parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def _session(url: str, name: str, **settings: object) -> ServiceSession:
    base: dict[str, object] = {"retry_budget": None, "forward_deadline": False}
    return ServiceSession(base_url=url, service_name=name, **{**base, **settings})  # type: ignore[arg-type]


def _within_deadline(session: ServiceSession) -> Callable[[], object]:
    def call() -> object:
        with deadline_scope(20.0):
            return session.get(PATH)

    return call


def _in_bound_deadline(session: ServiceSession) -> Callable[[], object]:
    """Calls in a context whose deadline is bound once, as the Flask side binds a
    request's: what each call of a request costs, the binding not counted.

    ``session`` has no total limit of its own, so its calls inherit that deadline,
    as a service's calls do when its request's deadline is the shorter one."""
    context = contextvars.copy_context()
    context.run(deadline_scope(3600.0).__enter__)  # left in force in that context
    return lambda: context.run(session.get, PATH)


def cost(url: str, rounds: int, calls: int) -> None:
    clients: dict[str, Callable[[], object]] = {}
    none = _session(url, "bench-none")
    clients["no policy"] = lambda: none.get(PATH)
    deadline = _session(url, "bench-deadline", forward_deadline=True)
    clients["deadline"] = _within_deadline(deadline)
    bulkhead = _session(url, "bench-bulkhead", max_concurrent_calls=64)
    clients["bulkhead"] = lambda: bulkhead.get(PATH)
    budget = _session(url, "bench-budget", retry_budget=RetryBudgetConfig())
    clients["retry budget"] = lambda: budget.get(PATH)
    fallback = _session(url, "bench-fallback", fallback=LastGoodResponse())
    clients["fallback"] = lambda: fallback.get(PATH)
    every: dict[str, object] = {
        "forward_deadline": True,
        "max_concurrent_calls": 64,
        "retry_budget": RetryBudgetConfig(),
        "fallback": LastGoodResponse(),
    }
    clients["all four"] = _within_deadline(_session(url, "bench-all", **every))
    bound = _session(url, "bench-deadline-bound", forward_deadline=True, total_timeout=None)
    clients["deadline, bound"] = _in_bound_deadline(bound)
    every_bound = _session(
        url, "bench-all-bound", **{**every, "fallback": LastGoodResponse()}, total_timeout=None
    )
    clients["all four, bound"] = _in_bound_deadline(every_bound)
    # The same, keeping every answer: what a call costs whose URL was not called
    # within the cache's refresh_after (the others find a fresh answer kept).
    every_kept = _session(
        url,
        "bench-all-bound-kept",
        **{**every, "fallback": LastGoodResponse(refresh_after=0)},
        total_timeout=None,
    )
    clients["all four, bound, every answer kept"] = _in_bound_deadline(every_kept)

    # The clients take turns call by call (in an order that rotates), so a slow
    # moment of the machine falls on all of them alike; each round's sums give
    # one paired ratio per client.
    cpu: dict[str, list[float]] = {name: [] for name in clients}
    wall: dict[str, list[float]] = {name: [] for name in clients}
    names = list(clients)
    orders = [names[shift:] + names[:shift] for shift in range(len(names))]
    for round_index in range(rounds + 1):  # round 0 warms up
        cpu_sum = dict.fromkeys(names, 0.0)
        wall_sum = dict.fromkeys(names, 0.0)
        for index in range(calls):
            for name in orders[index % len(orders)]:
                call = clients[name]
                began_cpu, began = time.process_time(), time.perf_counter()
                call()
                cpu_sum[name] += time.process_time() - began_cpu
                wall_sum[name] += time.perf_counter() - began
        if round_index:
            for name in names:
                cpu[name].append(cpu_sum[name] / calls)
                wall[name].append(wall_sum[name] / calls)
    base_cpu = statistics.median(cpu["no policy"])
    print(f"\nsuccessful call to local gunicorn, median of {rounds} rounds of {calls} calls")
    print("(ratio: median over rounds of the round's time / the same round's no-policy time)")
    print(f"{'client':<36}{'CPU us':>9}{'ratio':>8}{'+us':>7}{'wall us':>10}{'ratio':>8}")
    for name in names:
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        print(
            f"{name:<36}{c * 1e6:>9.1f}{_paired(cpu, name):>8.3f}{(c - base_cpu) * 1e6:>7.1f}"
            f"{w * 1e6:>10.1f}{_paired(wall, name):>8.3f}"
        )


def _paired(times: dict[str, list[float]], name: str) -> float:
    """The median of ``name``'s per-round ratio to the no-policy client in that round:
    a slow moment of the machine slows both sides of a ratio."""
    return statistics.median(
        mine / base for mine, base in zip(times[name], times["no policy"], strict=True)
    )


def _per_call_us(work: Callable[[], object], calls: int = 200_000) -> float:
    began = time.process_time()
    for _ in range(calls):
        work()
    return (time.process_time() - began) / calls * 1e6


def policy_parts() -> None:
    """What each policy adds to a successful call, timed alone: the network's noise
    on a whole call (tens of microseconds) is larger than these figures."""
    bulkhead = Bulkhead("parts", max_concurrent_calls=64)
    budget = RetryBudget()

    def slot() -> None:
        bulkhead.acquire()
        bulkhead.release()

    fallback = LastGoodResponse()
    keeper = LastGoodResponse(refresh_after=0)
    answer = _good_answer()

    with deadline_scope(20.0):
        deadline_us = _per_call_us(lambda: forwarded_budget(time_left() or 0.0))
    parts = {
        "deadline (time left, budget forwarded)": deadline_us,
        "bulkhead (take and give back a slot)": _per_call_us(slot),
        "retry budget (count the call)": _per_call_us(budget.record_call),
        "fallback (remember: its answer kept, fresh)": _per_call_us(
            lambda: fallback.remember(answer)
        ),
    }
    kept_us = _per_call_us(lambda: keeper.remember(answer))
    print("\nCPU cost of each policy's work on a successful call")
    for name, us in parts.items():
        print(f"{name:<46}{us:>7.2f} us")
    print(f"{'all four':<46}{sum(parts.values()):>7.2f} us")
    print(f"{'fallback (remember: keep the answer)':<46}{kept_us:>7.2f} us")


def _good_answer() -> requests.Response:
    """A successful GET's answer as the session hands it to the fallback (body read)."""
    answer = requests.Response()
    answer.status_code = 200
    answer.reason = "OK"
    answer.headers.update({"Content-Type": "application/json", "Content-Length": "74"})
    answer._content = b'{"edges":[["p","q"],["q","r"]],"id":"abc123","nodes":["p","q","r"]}\n'
    answer.url = f"http://127.0.0.1:8000{PATH}"
    answer.request = requests.Request("GET", answer.url).prepare()
    return answer


def _refusal_us(call: Callable[[], object], refusal: type[Exception], calls: int) -> float:
    """Microseconds per call of ``call``, which raises ``refusal`` every time."""
    began = time.perf_counter()
    for _ in range(calls):
        with contextlib.suppress(refusal):
            call()
    return (time.perf_counter() - began) / calls * 1e6


def refusals(url: str, calls: int) -> None:
    """Time calls refused before any I/O (``url``: where nothing listens)."""
    full = _session(url, "bench-full", max_concurrent_calls=1)
    holder = full._bulkhead
    assert isinstance(holder, Bulkhead)
    holder.acquire()  # the only slot is taken: every call is refused
    bulkhead_us = _refusal_us(lambda: full.get(PATH), BulkheadFullError, calls)
    holder.release()
    late = _session(url, "bench-late")
    with deadline_scope(0.0):
        deadline_us = _refusal_us(lambda: late.get(PATH), DeadlineExceededError, calls)
    print(f"\nrefused calls, {calls} each (no network I/O)")
    print(f"bulkhead full:    {bulkhead_us:7.1f} us per call")
    print(f"no time left:     {deadline_us:7.1f} us per call")


def amplification(calls: int) -> None:
    retries = 3

    def received(url: str) -> int:
        return int(requests.get(f"{url}/count", timeout=10).json()["received"])

    print(f"\nrequests a failing service receives for {calls} calls, {retries} retries each")
    print(f"{'client':<34}{'received':>10}{'per call':>10}")
    clients: list[tuple[str, Callable[[str], requests.Session]]] = []

    def plain(url: str) -> requests.Session:
        session = requests.Session()
        retry = Retry(
            total=retries, status_forcelist=[503], backoff_factor=0, raise_on_status=False
        )
        session.mount("http://", HTTPAdapter(max_retries=retry))
        return session

    def budgeted(config: RetryBudgetConfig | None) -> Callable[[str], requests.Session]:
        def make(url: str) -> requests.Session:
            return ServiceSession(
                base_url=url,
                service_name=f"bench-amplification-{config}",
                use_circuit_breaker=False,
                retries=make_retry(retries, backoff_factor=0, backoff_jitter=0),
                retry_budget=config,
            )

        return make

    clients.append(("requests + urllib3 Retry", plain))
    clients.append(("ServiceSession, no budget", budgeted(None)))
    clients.append(("ServiceSession, default budget", budgeted(RetryBudgetConfig())))
    clients.append(
        ("ServiceSession, 20%, no minimum", budgeted(RetryBudgetConfig(min_per_second=0)))
    )
    for name, make in clients:
        with gunicorn_server("failing_app") as url:
            session = make(url)
            for _ in range(calls):
                session.get(f"{url}/x", timeout=10)
            count = received(url)
        print(f"{name:<34}{count:>10}{count / calls:>10.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="few rounds, for a smoke run")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--calls", type=int, default=1000)
    parser.add_argument("--failing-calls", type=int, default=500)
    args = parser.parse_args()
    rounds, calls, failing = (
        (2, 200, 100) if args.quick else (args.rounds, args.calls, args.failing_calls)
    )
    policy_parts()
    with gunicorn_server("create_app", pin=True) as url:
        cost(url, rounds, calls)
    # Nothing is sent: to a port nobody listens on, a call that was would fail.
    refusals("http://127.0.0.1:9", calls)
    amplification(failing)


if __name__ == "__main__":
    main()
