"""gennet_sync's circuit breaker side by side with pybreaker and circuitbreaker.

Three measurements, every contender in the same process, in interleaved rounds
(the best round of each counts, the usual way to filter scheduler noise):

1. CLOSED, successful call: ns per call, against a floor that is a bare call
   inside ``with threading.Lock():`` plus one ``time.monotonic()``.
2. OPEN, rejected call: ns per refused call (raise and catch), against a floor
   that takes a lock, reads ``time.monotonic()`` and raises a plain exception
   that the caller catches (what any refusal must do at least).
3. 8 threads, each making calls that sleep 1 ms (like I/O), through one shared
   breaker: total throughput relative to one thread.

Run::

    .venv/bin/python -m benchmarks.bench_breaker          # about a minute
    .venv/bin/python -m benchmarks.bench_breaker --quick  # a few seconds
"""

from __future__ import annotations

import argparse
import contextlib
import threading
import time
from collections.abc import Callable

import circuitbreaker
import pybreaker

from gennet_sync.circuit_breaker import CircuitBreaker, CircuitBreakerError

Bench = Callable[[int], float]  # runs n calls, returns elapsed seconds


def noop() -> int:
    return 1


def sleep_1ms() -> None:
    time.sleep(0.001)


# -- contenders for the CLOSED success path -------------------------------------------------


def closed_floor() -> Bench:
    lock = threading.Lock()
    monotonic = time.monotonic

    def floor_call(func: Callable[[], int]) -> int:
        with lock:
            result = func()
        monotonic()
        return result

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            floor_call(noop)
        return time.perf_counter() - start

    return run


def closed_gennet_call() -> Bench:
    breaker = CircuitBreaker(name="bench")
    call = breaker.call

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            call(noop)
        return time.perf_counter() - start

    return run


def closed_gennet_permit() -> Bench:
    breaker = CircuitBreaker(name="bench-permit")
    acquire = breaker.acquire

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            permit = acquire()
            noop()
            permit.success()
        return time.perf_counter() - start

    return run


def closed_pybreaker() -> Bench:
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    call = breaker.call

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            call(noop)
        return time.perf_counter() - start

    return run


def closed_circuitbreaker() -> Bench:
    guarded = circuitbreaker.circuit(failure_threshold=5, recovery_timeout=60)(noop)

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            guarded()
        return time.perf_counter() - start

    return run


# -- contenders for the OPEN rejection path ---------------------------------------------------


class _Refused(Exception):
    pass


def open_floor() -> Bench:
    lock = threading.Lock()
    monotonic = time.monotonic

    def refuse(func: Callable[[], int]) -> int:
        with lock:
            monotonic()
        raise _Refused()

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            try:  # noqa: SIM105 (as below)
                refuse(noop)
            except _Refused:
                pass
        return time.perf_counter() - start

    return run


def open_gennet() -> Bench:
    breaker = CircuitBreaker(name="bench-open")
    breaker.open()
    call = breaker.call

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            try:  # noqa: SIM105 (contextlib.suppress would add its own cost to the timing)
                call(noop)
            except CircuitBreakerError:
                pass
        return time.perf_counter() - start

    return run


def open_pybreaker() -> Bench:
    breaker = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=3600)
    breaker.open()
    call = breaker.call

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            try:  # noqa: SIM105 (as above)
                call(noop)
            except pybreaker.CircuitBreakerError:
                pass
        return time.perf_counter() - start

    return run


def open_circuitbreaker() -> Bench:
    def failing() -> int:
        raise OSError("down")

    guarded = circuitbreaker.circuit(failure_threshold=1, recovery_timeout=3600)(failing)
    with contextlib.suppress(OSError):
        guarded()  # one failure opens it

    def run(n: int) -> float:
        start = time.perf_counter()
        for _ in range(n):
            try:  # noqa: SIM105 (as above)
                guarded()
            except circuitbreaker.CircuitBreakerError:
                pass
        return time.perf_counter() - start

    return run


def best_ns_per_call(contenders: dict[str, Bench], calls: int, rounds: int) -> dict[str, float]:
    """Interleave the contenders round by round; keep each one's best round."""
    best = {name: float("inf") for name in contenders}
    for run in contenders.values():
        run(calls // 10)  # warm up
    for _ in range(rounds):
        for name, run in contenders.items():
            best[name] = min(best[name], run(calls) / calls * 1e9)
    return best


# -- threads ------------------------------------------------------------------------------------


def throughput(call: Callable[[], object], threads: int, calls_per_thread: int) -> float:
    """Calls per second with ``threads`` threads each making ``calls_per_thread`` calls."""
    barrier = threading.Barrier(threads + 1)

    def worker() -> None:
        barrier.wait()
        for _ in range(calls_per_thread):
            call()

    workers = [threading.Thread(target=worker) for _ in range(threads)]
    for thread in workers:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in workers:
        thread.join()
    return threads * calls_per_thread / (time.perf_counter() - start)


def threaded_contenders() -> dict[str, Callable[[], object]]:
    ours = CircuitBreaker(name="bench-threads")
    theirs = pybreaker.CircuitBreaker(fail_max=5, reset_timeout=60)
    guarded = circuitbreaker.circuit(failure_threshold=5, recovery_timeout=60)(sleep_1ms)
    return {
        "bare (no breaker)": sleep_1ms,
        "gennet_sync": lambda: ours.call(sleep_1ms),
        "pybreaker": lambda: theirs.call(sleep_1ms),
        "circuitbreaker": guarded,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer calls and rounds")
    args = parser.parse_args()
    calls, rounds = (20_000, 3) if args.quick else (200_000, 7)
    thread_calls, thread_rounds = (60, 1) if args.quick else (300, 3)

    print("1. CLOSED, successful call (ns/call, best of", rounds, "interleaved rounds)")
    closed = best_ns_per_call(
        {
            "floor (lock + call + monotonic)": closed_floor(),
            "gennet_sync call()": closed_gennet_call(),
            "gennet_sync acquire()/success()": closed_gennet_permit(),
            "pybreaker": closed_pybreaker(),
            "circuitbreaker": closed_circuitbreaker(),
        },
        calls,
        rounds,
    )
    floor = closed["floor (lock + call + monotonic)"]
    ours = closed["gennet_sync call()"]
    for name, ns in closed.items():
        print(f"   {name:34s} {ns:8.1f} ns   {ns / floor:5.2f}x floor")
    print(f"   gennet_sync call() / floor     = {ours / floor:.2f}  (target <= 2.0)")
    print(f"   gennet_sync call() / pybreaker = {ours / closed['pybreaker']:.2f}  (target <= 0.5)")

    print("\n2. OPEN, rejected call (ns/call)")
    opened = best_ns_per_call(
        {
            "floor (lock + monotonic + raise)": open_floor(),
            "gennet_sync": open_gennet(),
            "pybreaker": open_pybreaker(),
            "circuitbreaker": open_circuitbreaker(),
        },
        calls,
        rounds,
    )
    refusal_floor = opened["floor (lock + monotonic + raise)"]
    refused = opened["gennet_sync"]
    for name, ns in opened.items():
        print(f"   {name:34s} {ns:8.1f} ns   {ns / refusal_floor:5.2f}x floor")
    print(f"   gennet_sync / floor            = {refused / refusal_floor:.2f}  (target <= 2.5)")
    print(
        f"   gennet_sync / circuitbreaker   = {refused / opened['circuitbreaker']:.2f}"
        "  (target < 1.0)"
    )

    print("\n3. calls sleeping 1 ms through one breaker: 8 threads vs 1 thread (calls/s)")
    contenders = threaded_contenders()
    single = dict.fromkeys(contenders, 0.0)
    eight = dict.fromkeys(contenders, 0.0)
    for _ in range(thread_rounds):
        for name, call in contenders.items():
            single[name] = max(single[name], throughput(call, 1, thread_calls))
            eight[name] = max(eight[name], throughput(call, 8, thread_calls))
    for name in contenders:
        print(
            f"   {name:34s} 1 thread {single[name]:7.0f}/s   8 threads {eight[name]:7.0f}/s"
            f"   speed-up {eight[name] / single[name]:4.1f}x"
        )
    print("   target: gennet_sync speed-up >= 6x")


if __name__ == "__main__":
    main()
