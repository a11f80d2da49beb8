"""Breaker state shared by every worker and host through Redis (extra ``[redis]``).

:class:`RedisStorage` implements :class:`~gennet_sync.storage.BreakerStorage`.
The breaker keeps running its state machine locally and calls the storage only
at the points listed in :mod:`gennet_sync.storage`, so a successful call in
CLOSED state costs no round trip.  Every call that does reach Redis is exactly
one round trip: the multi-key steps run as Lua scripts (sent once, then by
SHA, reloaded automatically after a restart or ``SCRIPT FLUSH``).

It works on one server, through Redis Sentinel and on a Redis Cluster (see
:meth:`RedisStorage.from_url` for the URLs).

Keys of breaker ``name`` under prefix ``P`` (the ``{name}`` hash tag keeps them
in one Redis Cluster slot, so a script may touch all of them; ``%``, ``{`` and
``}`` in a name are escaped, and ``""`` is ``%``: see ``_hash_tag``):

==========================  ===================================================
key                         meaning
==========================  ===================================================
``P:{name}:failures``       consecutive failures counted across the fleet
``P:{name}:open``           exists while OPEN; its PX TTL *is* the open period,
                            so no host compares its clock with another's (set
                            by hand without a TTL: OPEN until deleted)
``P:{name}:tripped``        exists while not CLOSED; with ``open`` gone the
                            breaker is HALF_OPEN
``P:{name}:trials``         sorted set of HALF_OPEN trial leases (member: a
                            token, score: lease expiry in Redis server time)
``P:{name}:window``         hash of the fleet's time-window outcomes per second
                            of Redis server time: fields ``c:SECOND`` (calls),
                            ``f:SECOND`` (failures), ``s:SECOND`` (slow calls),
                            their running sums ``total:c``, ``total:f`` and
                            ``total:s``, and ``floor``, the oldest second whose
                            bucket is still counted
``P:{name}:closings``       times the fleet was closed: numbers its CLOSED
                            periods, so outcomes of an earlier one are refused
``P:{name}:retry_budget``   hash of a fleet-wide retry budget's counts per
                            second of Redis server time: ``c:SECOND`` (calls),
                            ``r:SECOND`` (retries), running sums ``total:c``
                            and ``total:r``, and ``floor`` as in ``window``
==========================  ===================================================

Every key carries a TTL, so an abandoned breaker leaves nothing behind, and a
missing key always reads as CLOSED, so a ``FLUSHALL`` cannot wedge anything.

The window hash is what makes a ``window_type="time"`` rate window fleet-wide
(:meth:`RedisStorage.sync_window`): at each sync a process takes the buckets
that left the window off the running sums, adds the outcomes it recorded since
its last sync to the bucket of the current server second and reads the sums, in
one script whose work grows with the seconds since the fleet's previous sync,
not with the window.  Its TTL is the window plus a minute; opening or closing
the breaker deletes it, so every CLOSED period starts with an empty window.

When Redis is down, slow or refusing commands, every method returns ``None``
(or does nothing) within the socket timeout and the breaker carries on with its
local state.  One warning is logged per outage and one info line when Redis
answers again; in between the storage backs off exponentially and, until the
next probe is due, returns at once without touching the network.  Trial
releases are the exception: one is sent even while backing off (a Redis out of
memory refuses the trial's outcome write but still takes the release), and one
that fails, or an ``acquire_trial`` whose reply was lost, is given back with the
next command Redis answers, so a single failed command never holds the fleet's
trial slots for longer than that (or than the lease, whichever ends first).

Requires Redis 5 or newer (scripts read the server clock with ``TIME``).
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import math
import os
import threading
import time
import uuid
import warnings
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, TypeAlias, TypeVar
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

try:
    import redis
    from redis.backoff import NoBackoff
    from redis.cluster import ClusterNode, RedisCluster
    from redis.connection import parse_url
    from redis.exceptions import NoScriptError
    from redis.retry import Retry
    from redis.sentinel import Sentinel, SentinelConnectionPool
except ImportError as error:  # pragma: no cover - depends on the installed extras
    raise ImportError("RedisStorage needs redis-py: pip install 'gennet_sync[redis]'") from error

from gennet_sync.storage import CircuitState, RetryTotals, SharedState, WindowTotals

__all__ = ["RedisClient", "RedisClientWarning", "RedisStorage"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

#: A client RedisStorage can work through: one server (``redis.Redis``, also what
#: ``Sentinel.master_for`` returns) or a Redis Cluster.
RedisClient: TypeAlias = redis.Redis | RedisCluster


class RedisClientWarning(UserWarning):
    """A client handed to :class:`RedisStorage` can stall the calls that reach it.

    Issued for a client whose socket timeouts are unset or longer than a
    second, or that retries failed commands: while Redis hangs or fails over,
    every breaker call that reaches it would wait that long (times the retries).
    """


# KEYS of every script: failures, open, tripped, trials, window; SYNC_WINDOW and
# SET_CLOSED also closings.
# Replies of LOAD and RECORD_FAILURE: {failures, PTTL of open, tripped (0/1)}.

_LOAD = """
local failures = tonumber(redis.call('GET', KEYS[1])) or 0
return {failures, redis.call('PTTL', KEYS[2]), redis.call('EXISTS', KEYS[3])}
"""

# ARGV: failure_threshold, open period (ms), tripped-marker TTL (ms), key TTL (ms).
_RECORD_FAILURE = """
local open_ms = redis.call('PTTL', KEYS[2])
if open_ms ~= -2 then
  return {0, open_ms, 1}
end
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {0, -2, 1}
end
local failures = redis.call('INCR', KEYS[1])
if failures >= tonumber(ARGV[1]) then
  redis.call('SET', KEYS[2], '1', 'PX', ARGV[2])
  redis.call('SET', KEYS[3], '1', 'PX', ARGV[3])
  redis.call('DEL', KEYS[1], KEYS[4], KEYS[5])
  return {failures, tonumber(ARGV[2]), 1}
end
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {failures, -2, 0}
"""

# ARGV: open period (ms), tripped-marker TTL (ms).
_SET_OPEN = """
redis.call('SET', KEYS[2], '1', 'PX', ARGV[1])
redis.call('SET', KEYS[3], '1', 'PX', ARGV[2])
redis.call('DEL', KEYS[1], KEYS[4], KEYS[5])
return 1
"""

# ARGV: calls, failures, slow calls (this process's outcomes since its last sync),
# window (s), window key TTL (ms), the closings they were recorded under (-1: unknown).
# Reply: LOAD's three values, then the fleet's calls, failures, slow calls, closings.
_SYNC_WINDOW = """
local failures = tonumber(redis.call('GET', KEYS[1])) or 0
local open_ms = redis.call('PTTL', KEYS[2])
local tripped = redis.call('EXISTS', KEYS[3])
local closings = tonumber(redis.call('GET', KEYS[6])) or 0
local window = tonumber(ARGV[4])
local second = tonumber(redis.call('TIME')[1])
local oldest = second - window + 1
local recorded_under = tonumber(ARGV[6])
-- Outcomes of calls admitted before a trip join neither the OPEN period nor the
-- CLOSED period after it.
local adding = open_ms == -2 and tripped == 0 and tonumber(ARGV[1]) > 0
  and (recorded_under == -1 or recorded_under == closings)
local kinds = {'c', 'f', 's'}
local floor = tonumber(redis.call('HGET', KEYS[5], 'floor'))
if floor ~= nil and oldest - floor >= window then
  -- Every bucket left the window since the last sync.
  redis.call('DEL', KEYS[5])
  floor = nil
elseif floor ~= nil and floor < oldest then
  -- Take the seconds that left the window since the last sync off the totals:
  -- one or two per sync while the fleet is busy.
  for first = floor, oldest - 1, 1000 do
    local fields = {}
    for at = first, math.min(first + 999, oldest - 1) do
      for _, kind in ipairs(kinds) do
        fields[#fields + 1] = kind .. ':' .. at
      end
    end
    local values = redis.call('HMGET', KEYS[5], unpack(fields))
    local gone = {c = 0, f = 0, s = 0}
    for i, field in ipairs(fields) do
      local kind = string.sub(field, 1, 1)
      gone[kind] = gone[kind] + (tonumber(values[i]) or 0)
    end
    for _, kind in ipairs(kinds) do
      if gone[kind] > 0 then
        redis.call('HINCRBY', KEYS[5], 'total:' .. kind, -gone[kind])
      end
    end
    redis.call('HDEL', KEYS[5], unpack(fields))
  end
  floor = oldest
  redis.call('HSET', KEYS[5], 'floor', floor)
end
if adding then
  -- A server clock that stepped back still adds above the swept seconds.
  local at = math.max(second, floor or oldest)
  for i, kind in ipairs(kinds) do
    if tonumber(ARGV[i]) > 0 then
      redis.call('HINCRBY', KEYS[5], kind .. ':' .. at, ARGV[i])
      redis.call('HINCRBY', KEYS[5], 'total:' .. kind, ARGV[i])
    end
  end
  if floor == nil then
    redis.call('HSET', KEYS[5], 'floor', oldest)
  end
  redis.call('PEXPIRE', KEYS[5], ARGV[5])
end
local totals = redis.call('HMGET', KEYS[5], 'total:c', 'total:f', 'total:s')
local calls = tonumber(totals[1]) or 0
if calls == 0 and floor ~= nil then
  redis.call('DEL', KEYS[5])
end
return {failures, open_ms, tripped, calls, tonumber(totals[2]) or 0,
        tonumber(totals[3]) or 0, closings}
"""

# KEYS: the retry-budget hash.  ARGV: calls, retries (this process's since its last
# sync), window (s), key TTL (ms).  Reply: the fleet's calls and retries in the window.
_SYNC_RETRY_BUDGET = """
local window = tonumber(ARGV[3])
local second = tonumber(redis.call('TIME')[1])
local oldest = second - window + 1
local floor = tonumber(redis.call('HGET', KEYS[1], 'floor'))
if floor ~= nil and oldest - floor >= window then
  redis.call('DEL', KEYS[1])
  floor = nil
elseif floor ~= nil and floor < oldest then
  -- Only the seconds that left the window since the fleet's last sync are read.
  local gone_c, gone_r = 0, 0
  for first = floor, oldest - 1, 1000 do
    local fields = {}
    for at = first, math.min(first + 999, oldest - 1) do
      fields[#fields + 1] = 'c:' .. at
      fields[#fields + 1] = 'r:' .. at
    end
    local values = redis.call('HMGET', KEYS[1], unpack(fields))
    for i = 1, #fields, 2 do
      gone_c = gone_c + (tonumber(values[i]) or 0)
      gone_r = gone_r + (tonumber(values[i + 1]) or 0)
    end
    redis.call('HDEL', KEYS[1], unpack(fields))
  end
  -- Only when non-zero: Lua makes -0 of a 0, which HINCRBY refuses.
  if gone_c > 0 then
    redis.call('HINCRBY', KEYS[1], 'total:c', -gone_c)
  end
  if gone_r > 0 then
    redis.call('HINCRBY', KEYS[1], 'total:r', -gone_r)
  end
  floor = oldest
  redis.call('HSET', KEYS[1], 'floor', floor)
end
local calls, retries = tonumber(ARGV[1]), tonumber(ARGV[2])
if calls > 0 or retries > 0 then
  local at = math.max(second, floor or oldest)
  redis.call('HINCRBY', KEYS[1], 'c:' .. at, calls)
  redis.call('HINCRBY', KEYS[1], 'r:' .. at, retries)
  redis.call('HINCRBY', KEYS[1], 'total:c', calls)
  redis.call('HINCRBY', KEYS[1], 'total:r', retries)
  if floor == nil then
    redis.call('HSET', KEYS[1], 'floor', oldest)
  end
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
local totals = redis.call('HMGET', KEYS[1], 'total:c', 'total:r')
return {tonumber(totals[1]) or 0, tonumber(totals[2]) or 0}
"""

# ARGV: key TTL (ms).
_SET_CLOSED = """
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5])
redis.call('INCR', KEYS[6])
redis.call('PEXPIRE', KEYS[6], ARGV[1])
return 1
"""

# ARGV: max_calls, lease (ms), token.
# Replies 1: lease taken; 0: OPEN or every slot leased; 2: CLOSED fleet-wide, so
# the call needs no trial slot at all.
_ACQUIRE_TRIAL = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
if redis.call('EXISTS', KEYS[3]) == 0 then
  return 2
end
local now = redis.call('TIME')
local now_ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[4], '-inf', now_ms)
if redis.call('ZCARD', KEYS[4]) >= tonumber(ARGV[1]) then
  return 0
end
local lease_ms = tonumber(ARGV[2])
redis.call('ZADD', KEYS[4], now_ms + lease_ms, ARGV[3])
if redis.call('PTTL', KEYS[4]) < lease_ms then
  redis.call('PEXPIRE', KEYS[4], lease_ms)
end
return 1
"""

_LEASE_TAKEN = 1
#: Seconds the window hash outlives its newest bucket's window.
_WINDOW_TTL_MARGIN = 60
_NO_TRIAL_NEEDED = 2

#: Trial leases kept for giving back after a failed release, per storage instance;
#: beyond this many the oldest are left to expire by themselves.
_MAX_UNRELEASED = 1024

#: Instances alive in this process, reset in a forked child (gunicorn preload_app).
_instances: weakref.WeakSet[RedisStorage] = weakref.WeakSet()


def _reset_instances_after_fork() -> None:
    for storage in list(_instances):
        storage._after_fork()


if hasattr(os, "register_at_fork"):  # not on every platform (Windows)
    os.register_at_fork(after_in_child=_reset_instances_after_fork)


def _milliseconds(seconds: float) -> int:
    """A positive whole number of milliseconds (PX rejects 0)."""
    return max(1, math.ceil(seconds * 1000.0))


def _check_positive(name: str, value: float, *, allow_zero: bool = False) -> float:
    value = float(value)
    if math.isnan(value) or math.isinf(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, not {value!r}")
    return value


#: Longest socket timeout (seconds) a client handed in may have without a warning.
_SAFE_CLIENT_TIMEOUT = 1.0
_SENTINEL_PORT = 26379
_REDIS_PORT = 6379


def _hash_tag(name: str) -> str:
    """``name`` as the content of a Redis Cluster hash tag: never empty, no brace.

    Redis Cluster hashes only what lies between a key's first ``{`` and the
    first ``}`` after it, unless that is empty.  A ``}`` in a name would end the
    tag early (breakers named ``a}x`` and ``a}y`` would share a slot), and an
    empty tag (the name ``""`` or ``}``) makes every key hash whole, into
    different slots, where no script may touch them together.  Escaping ``%``
    too keeps the mapping one to one; ``""`` becomes ``%``, which no escaped
    name can be.  A name without ``%``, ``{`` or ``}`` is used as it is, so its
    keys are those earlier versions wrote.
    """
    if not name:
        return "%"
    return name.replace("%", "%25").replace("{", "%7B").replace("}", "%7D")


def _no_retries() -> Retry:
    # A breaker storage must answer fast or not at all: one attempt, then the
    # storage's outage backoff decides when to try again.
    return Retry(NoBackoff(), 0)


def _client_risks(client: RedisClient) -> list[str]:
    """What in ``client``'s settings can make one command wait long (empty: nothing)."""
    if isinstance(client, RedisCluster):
        kwargs = client.nodes_manager.connection_kwargs
        # A cluster client retries (and sleeps between tries) itself; its nodes'
        # own connections never retry.
        retries = client.retry.get_retries()
    else:
        kwargs = client.connection_pool.connection_kwargs
        retry = kwargs.get("retry")
        if retry is not None:
            retries = retry.get_retries()
        else:
            # A connection without a Retry retries once if told to retry on anything.
            retries = int(bool(kwargs.get("retry_on_timeout") or kwargs.get("retry_on_error")))
    risks = []
    timeout = kwargs.get("socket_timeout")
    # redis-py connects with the socket timeout when no connect timeout is set.
    connect_timeout = kwargs.get("socket_connect_timeout") or timeout
    for option, value in (("socket_timeout", timeout), ("socket_connect_timeout", connect_timeout)):
        if value is None or value > _SAFE_CLIENT_TIMEOUT:
            risks.append(f"{option}={value!r}")
    if retries > 0:
        risks.append(f"{retries} retries")
    pool = getattr(client, "connection_pool", None)
    if isinstance(pool, SentinelConnectionPool):
        # Every new connection asks the sentinels where the primary is.
        for sentinel in pool.sentinel_manager.sentinels:
            risks.extend(f"sentinel {risk}" for risk in _client_risks(sentinel))
            break  # they are built alike: one sentinel's settings stand for all
    return risks


def _warn_if_risky(client: RedisClient) -> None:
    risks = _client_risks(client)
    if risks:
        warnings.warn(
            f"the Redis client given to RedisStorage has {', '.join(risks)}: while Redis "
            f"hangs or fails over, a breaker call can wait that long; give it "
            f"socket_timeout and socket_connect_timeout of at most "
            f"{_SAFE_CLIENT_TIMEOUT:g} s and retry=Retry(NoBackoff(), 0), or pass a URL",
            RedisClientWarning,
            stacklevel=3,
        )


def _describe_client(client: RedisClient) -> str:
    """Where ``client`` connects, without credentials, for logs and ``repr``."""
    if isinstance(client, RedisCluster):
        nodes = ",".join(node.name for node in client.startup_nodes)
        return f"cluster {nodes}"
    kwargs = client.get_connection_kwargs()
    db = kwargs.get("db", 0)
    pool = client.connection_pool
    if isinstance(pool, SentinelConnectionPool):
        return f"sentinel {pool.service_name}/{db}"
    # redis-py leaves the port out of a URL that has none: it is then the default.
    where = kwargs.get("path") or f"{kwargs.get('host')}:{kwargs.get('port') or _REDIS_PORT}"
    return f"{where}/{db}"


def _nodes(netloc: str, default_port: int, url: str) -> tuple[str, list[tuple[str, int]]]:
    """The user info and the ``(host, port)`` list of a ``host:port[,host:port...]`` netloc."""
    userinfo, _, hosts = netloc.rpartition("@")
    nodes = []
    for host in hosts.split(","):
        parsed = urlsplit(f"//{host.strip()}")
        try:
            port = parsed.port
        except ValueError:
            raise ValueError(f"invalid port {host!r} in the storage URL {url!r}") from None
        if not parsed.hostname:
            raise ValueError(f"a host is missing in the storage URL {url!r}")
        nodes.append((parsed.hostname, port or default_port))
    return userinfo, nodes


def _check_options(url: str, make: Callable[[], object]) -> None:
    """Make a connection object (it does not connect): an unknown option fails now.

    redis-py would only fail at the first command, which the storage reports as
    Redis being unavailable, for ever.
    """
    try:
        make()
    except TypeError as error:
        raise ValueError(f"the storage URL {url!r} has an option redis-py lacks: {error}") from None


def _client_from_url(
    url: str, *, socket_timeout: float, connect_timeout: float
) -> tuple[Callable[[], RedisClient], str]:
    """How to build the client ``url`` names, and where it connects (for ``repr``).

    Every client has the short timeouts given (unless the URL sets its own) and
    never retries, nor do the sentinel connections a Sentinel client makes.

    Raises:
        ValueError: ``url`` has no known form, or an option redis-py lacks.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("redis", "rediss", "unix"):
        client = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout,
            socket_connect_timeout=connect_timeout,
            retry=_no_retries(),
            retry_on_timeout=False,
        )
        pool = client.connection_pool
        _check_options(url, lambda: pool.connection_class(**pool.connection_kwargs))
        return (lambda: client), _describe_client(client)
    base, _, topology = scheme.partition("+")
    if base not in ("redis", "rediss") or topology not in ("sentinel", "cluster"):
        raise ValueError(f"not a Redis URL: {url!r}")
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    sentinel_auth = {
        key: query.pop(f"sentinel_{key}")
        for key in ("username", "password")
        if f"sentinel_{key}" in query
    }
    userinfo, nodes = _nodes(
        parts.netloc, _SENTINEL_PORT if topology == "sentinel" else _REDIS_PORT, url
    )
    # redis-py reads credentials and typed options (socket_timeout=0.5, ...) from a
    # one-server URL: have it read ours.
    one_server = urlunsplit(
        (base, f"{userinfo}@localhost" if userinfo else "localhost", "", urlencode(query), "")
    )
    options: dict[str, Any] = parse_url(one_server)  # type: ignore[no-untyped-call]
    # ?db=N as redis-py reads it; checked against the path's db below.
    query_db: int | None = options.pop("db", None) if "db" in query else None
    for key in ("host", "port", "connection_class", "db"):
        options.pop(key, None)
    options.setdefault("socket_timeout", socket_timeout)
    options.setdefault("socket_connect_timeout", connect_timeout)
    if base == "rediss":
        options["ssl"] = True
    hosts = ",".join(f"{host}:{port}" for host, port in nodes)
    path = [unquote(segment) for segment in parts.path.split("/") if segment]

    # The primary, each cluster node and each sentinel is a redis.Redis with these
    # options (a sentinel with some of them).
    _check_options(url, lambda: redis.Redis(**options))
    if topology == "cluster":
        if path not in ([], ["0"]) or query_db not in (None, 0):
            raise ValueError(f"Redis Cluster has only database 0, not another in {url!r}")

        def cluster() -> RedisClient:
            return RedisCluster(
                startup_nodes=[ClusterNode(host, port) for host, port in nodes],  # type: ignore[no-untyped-call]
                retry=_no_retries(),
                # A cluster missing a primary still serves the other slots' breakers.
                require_full_coverage=False,
                **options,
            )

        return cluster, f"cluster {hosts}"

    if not path or len(path) > 2 or (len(path) == 2 and not _is_db_number(path[1])):
        raise ValueError(
            f"a Sentinel storage URL is redis+sentinel://host:port[,host:port...]"
            f"/service_name[/db], not {url!r}"
        )
    service = path[0]
    path_db = int(path[1]) if len(path) == 2 else None
    if path_db is not None and query_db is not None and path_db != query_db:
        raise ValueError(f"two databases ({path_db} and ?db={query_db}) in {url!r}")
    db = path_db if path_db is not None else query_db or 0
    sentinel_kwargs = {
        key: value
        for key, value in options.items()
        if key.startswith(("socket_", "ssl")) and key != "socket_keepalive_options"
    }
    sentinel_kwargs.update(sentinel_auth, retry=_no_retries())
    sentinel = Sentinel(nodes, sentinel_kwargs=sentinel_kwargs)  # type: ignore[no-untyped-call]
    client = sentinel.master_for(service, db=db, retry=_no_retries(), **options)  # type: ignore[no-untyped-call]
    return (lambda: client), f"sentinel {service}@{hosts}/{db}"


def _is_db_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


@dataclass(frozen=True)
class _Keys:
    failures: str
    open: str
    tripped: str
    trials: str
    window: str
    closings: str
    retry_budget: str

    def all(self) -> list[str]:
        """The keys every script gets (``closings`` only where it is needed)."""
        return [self.failures, self.open, self.tripped, self.trials, self.window]


class RedisStorage:
    """Fleet-wide breaker state in Redis, for every worker of every host.

    Args:
        client_or_url: A URL (see :meth:`from_url` for the forms: one server,
            Sentinel or Cluster), or a ready ``redis.Redis`` (also one from
            ``Sentinel.master_for``) or ``redis.cluster.RedisCluster`` client.
            A client is used as given: give it short socket timeouts and no
            retries, or a slow Redis will slow the calls that reach it (a
            :class:`RedisClientWarning` says so).
        prefix: First part of every key, so several applications can share one
            Redis database; without ``{`` or ``}`` (they would choose the keys'
            Redis Cluster slot).
        sync_interval: Longest time (seconds) a breaker acts on its local view
            before reloading the shared state: the delay within which a trip by
            one process reaches the others, and within which a process's calls
            join the fleet's time window.  0 reloads on every admission.
        socket_timeout: Read timeout (seconds) of a connection made from a URL.
        connect_timeout: Connect timeout (seconds) of a connection made from a URL.
        key_ttl: Seconds an idle failure count, or a tripped breaker nobody
            touches after its open period, is kept before Redis drops it.
        retry_backoff: Seconds without Redis after the first failed command;
            doubles after every failed probe, up to ``max_retry_backoff``.
        max_retry_backoff: Longest pause (seconds) between two probes.
        clock: Monotonic clock (seconds) timing the backoff; injectable for tests.

    Raises:
        ValueError: for a timeout, interval or TTL that is negative, zero (where
            zero makes no sense), infinite or NaN, an empty prefix or one with
            a brace, or a URL of no known form.

    Example::

        from gennet_sync.circuit_breaker import CircuitBreaker
        from gennet_sync.redis_storage import RedisStorage

        storage = RedisStorage("redis://cache:6379/0", prefix="orders", sync_interval=0.5)
        breaker = CircuitBreaker(failure_threshold=5, recovery_timeout=30,
                                 name="payments", storage=storage)

    or, for every breaker the registry creates, with no code change::

        GENNET_BREAKER_STORAGE=redis://cache:6379/0?prefix=orders&sync_interval=0.5
    """

    shared: ClassVar[bool] = True

    #: Query parameters of a storage URL that configure the storage, not redis-py.
    URL_OPTIONS: ClassVar[tuple[str, ...]] = (
        "prefix",
        "sync_interval",
        "key_ttl",
        "retry_backoff",
        "max_retry_backoff",
    )

    def __init__(
        self,
        client_or_url: RedisClient | str,
        *,
        prefix: str = "gennet:cb",
        sync_interval: float = 0.5,
        socket_timeout: float = 0.2,
        connect_timeout: float = 0.2,
        key_ttl: float = 86400.0,
        retry_backoff: float = 1.0,
        max_retry_backoff: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not isinstance(prefix, str) or not prefix or "{" in prefix or "}" in prefix:
            raise ValueError(f"prefix must be a non-empty string without braces, not {prefix!r}")
        self.prefix = prefix
        self.sync_interval = _check_positive("sync_interval", sync_interval, allow_zero=True)
        socket_timeout = _check_positive("socket_timeout", socket_timeout)
        connect_timeout = _check_positive("connect_timeout", connect_timeout)
        self.key_ttl = _check_positive("key_ttl", key_ttl)
        self.retry_backoff = _check_positive("retry_backoff", retry_backoff)
        self.max_retry_backoff = _check_positive("max_retry_backoff", max_retry_backoff)
        if self.max_retry_backoff < self.retry_backoff:
            raise ValueError(
                f"max_retry_backoff ({max_retry_backoff!r}) must be >= "
                f"retry_backoff ({retry_backoff!r})"
            )
        self._clock = clock

        self._owns_client = isinstance(client_or_url, str)
        self._client: RedisClient | None
        if isinstance(client_or_url, str):
            self._build_client, self._where = _client_from_url(
                client_or_url, socket_timeout=socket_timeout, connect_timeout=connect_timeout
            )
            # A cluster client connects as it is built: that waits for the first
            # command, where a cluster that is down is an outage like any other.
            self._client = None
        else:
            _warn_if_risky(client_or_url)
            self._client = client_or_url
            self._where = _describe_client(client_or_url)
        self._client_lock = threading.Lock()

        self._load = _Script(self, _LOAD)
        self._record_failure = _Script(self, _RECORD_FAILURE)
        self._set_open = _Script(self, _SET_OPEN)
        self._acquire_trial = _Script(self, _ACQUIRE_TRIAL)
        self._sync_window = _Script(self, _SYNC_WINDOW)
        self._set_closed = _Script(self, _SET_CLOSED)
        self._sync_retry_budget = _Script(self, _SYNC_RETRY_BUDGET)

        self._keys_cache: dict[str, _Keys] = {}
        self._token_prefix = uuid.uuid4().hex
        self._token_counter = itertools.count()
        self._init_process_state()
        _instances.add(self)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisStorage:
        """A storage for ``url``; storage options may ride in its query string.

        ``prefix``, ``sync_interval``, ``key_ttl``, ``retry_backoff`` and
        ``max_retry_backoff`` in the query string configure the storage (keyword
        ``options`` win over them); every other query parameter (``socket_timeout``,
        ``health_check_interval``, ...) goes to redis-py.

        Args:
            url: One of

                - ``redis://[[user]:password@]host[:port][/db][?option=value...]``,
                  ``rediss://...`` (TLS) or ``unix://path``: one server;
                - ``redis+sentinel://[[user]:password@]host[:port][,host[:port]...]
                  /service_name[/db][?...]`` (``rediss+sentinel`` for TLS): the
                  primary that the sentinels at these addresses (port 26379 by
                  default) name ``service_name``, followed through failovers.
                  The user and password are the primary's; ``sentinel_username``
                  and ``sentinel_password`` in the query authenticate to the
                  sentinels;
                - ``redis+cluster://[[user]:password@]host[:port][,host[:port]...][?...]``
                  (``rediss+cluster`` for TLS): a Redis Cluster, found from
                  any of these nodes.

                Every client built from a URL makes one attempt per command
                (no retries, its sentinel connections neither) with the
                storage's short timeouts unless the query sets redis-py's.
            **options: Keyword arguments of :class:`RedisStorage`.

        Raises:
            ValueError: for an option value that is not a valid number, or a URL
                of none of these forms.

        Example::

            storage = RedisStorage.from_url("redis://cache:6379/0?prefix=orders")
            storage = RedisStorage.from_url("redis+sentinel://s1,s2,s3/breakers?prefix=orders")
            storage = RedisStorage.from_url("redis+cluster://node1:6379,node2:6379")
        """
        parts = urlsplit(url)
        redis_query: list[tuple[str, str]] = []
        url_options: dict[str, Any] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key not in cls.URL_OPTIONS:
                redis_query.append((key, value))
            elif key == "prefix":
                url_options[key] = value
            else:
                try:
                    url_options[key] = float(value)
                except ValueError:
                    raise ValueError(
                        f"{key} in the storage URL must be a number, not {value!r}"
                    ) from None
        redis_url = urlunsplit(parts._replace(query=urlencode(redis_query)))
        return cls(redis_url, **{**url_options, **options})

    # -- BreakerStorage --------------------------------------------------------

    def load(self, name: str) -> SharedState | None:
        """The shared state of breaker ``name``, or ``None`` when Redis is unavailable."""
        keys = self._keys(name)
        reply = self._run(lambda: self._load(keys=keys.all()))
        return None if reply is None else self._decode(reply)

    def sync_window(
        self,
        name: str,
        *,
        calls: int,
        failures: int,
        slow_calls: int,
        window_seconds: int,
        closings: int | None = None,
    ) -> SharedState | None:
        """:meth:`load`, adding this process's new window outcomes and reading the fleet's.

        The outcomes (counts since this process's previous sync) join the
        bucket of the current Redis server second, unless the fleet is OPEN or
        HALF_OPEN, or was closed again since they were recorded (``closings``
        differs from the fleet's; ``None``: not known, added).  The reply's
        ``window`` holds the fleet's totals over the ``window_seconds`` seconds
        up to now, in whole seconds of the server's clock (so no host compares
        its clock with another's), and the fleet's ``closings``.

        Returns:
            The shared state with the fleet's window totals, or ``None`` when
            Redis is unavailable (the outcomes are then dropped: the breaker
            has them in its local window).
        """
        keys = self._keys(name)
        window_seconds = max(1, int(window_seconds))
        args = [
            max(0, calls),
            max(0, failures),
            max(0, slow_calls),
            window_seconds,
            (window_seconds + _WINDOW_TTL_MARGIN) * 1000,
            -1 if closings is None else closings,
        ]
        all_keys = [*keys.all(), keys.closings]
        reply = self._run(lambda: self._sync_window(keys=all_keys, args=args))
        if reply is None:
            return None
        state = self._decode(reply[:3])
        window = WindowTotals(*(int(value) for value in reply[3:7]))
        return SharedState(state.state, state.failure_count, state.open_remaining, window)

    def sync_retry_budget(
        self, name: str, *, calls: int, retries: int, window_seconds: int
    ) -> RetryTotals | None:
        """Add this process's calls and retries since its last sync; the fleet's totals.

        One round trip.  The counts join the bucket of the current Redis server
        second; the reply sums every process's over the ``window_seconds``
        seconds up to now (whole seconds of the server's clock).  Keyed apart
        from the breaker of the same name, which it never touches.

        Returns:
            The fleet's calls and retries, or ``None`` when Redis is unavailable
            (the counts are then not counted fleet-wide).
        """
        key = self._keys(name).retry_budget
        window_seconds = max(1, int(window_seconds))
        args = [
            max(0, calls),
            max(0, retries),
            window_seconds,
            (window_seconds + _WINDOW_TTL_MARGIN) * 1000,
        ]
        reply = self._run(lambda: self._sync_retry_budget(keys=[key], args=args))
        if reply is None:
            return None
        return RetryTotals(int(reply[0]), int(reply[1]))

    def record_failure(
        self, name: str, *, failure_threshold: int, open_for: float
    ) -> SharedState | None:
        """Count one failure fleet-wide and open at ``failure_threshold``, atomically.

        A failure reported while the fleet is already OPEN or HALF_OPEN (a call
        admitted on a view older than the trip) is not counted: the state is
        returned as it is, so the breaker can catch up.

        Returns:
            The shared state after counting, or ``None`` when Redis is unavailable.
        """
        keys = self._keys(name)
        open_ms = _milliseconds(open_for)
        args = [max(1, failure_threshold), open_ms, open_ms + self._key_ttl_ms, self._key_ttl_ms]
        reply = self._run(lambda: self._record_failure(keys=keys.all(), args=args))
        return None if reply is None else self._decode(reply)

    def reset_failures(self, name: str) -> None:
        """A success in CLOSED: the fleet's consecutive-failure count starts again at 0."""
        key = self._keys(name).failures
        self._run(lambda: self.client.delete(key))

    def set_open(self, name: str, open_for: float) -> None:
        """Open breaker ``name`` fleet-wide for ``open_for`` s; leased trials and the window end."""
        keys = self._keys(name)
        open_ms = _milliseconds(open_for)
        args = [open_ms, open_ms + self._key_ttl_ms]
        self._run(lambda: self._set_open(keys=keys.all(), args=args))

    def set_closed(self, name: str) -> None:
        """Close breaker ``name`` fleet-wide: count, OPEN period, trial leases and window go.

        Not when the calling thread's trial was admitted on a fleet that was already
        CLOSED (:meth:`acquire_trial` took no slot): then its success is just a
        success in CLOSED, which resets the failure count and leaves the fleet's
        window and CLOSED period alone (every process that went HALF_OPEN a moment
        before it synced would otherwise restart the fleet's window again).
        """
        if self._holds_no_slot_trial(name):
            self.reset_failures(name)
            return
        keys = self._keys(name)
        all_keys = [*keys.all(), keys.closings]
        self._run(lambda: self._set_closed(keys=all_keys, args=[self._key_ttl_ms]))

    def acquire_trial(self, name: str, *, max_calls: int, lease: float) -> bool | None:
        """Lease one of ``max_calls`` fleet-wide HALF_OPEN trial slots for ``lease`` s.

        A lease not given back with :meth:`release_trial` (its process died)
        ends by itself after ``lease`` seconds.  When the fleet is CLOSED the
        call needs no slot and True is returned without taking one.

        Returns:
            True when the call may go ahead as a trial, False when the breaker is
            OPEN or every slot is leased, ``None`` when Redis is unavailable.
        """
        keys = self._keys(name)
        token = f"{self._token_prefix}:{os.getpid()}:{next(self._token_counter)}"
        args: list[int | str] = [max(1, max_calls), _milliseconds(lease), token]
        ends_at = self._clock() + lease
        reply = self._run(lambda: self._acquire_trial(keys=keys.all(), args=args))
        if reply is None:
            # A timeout may have lost the reply of a script that did take the slot:
            # give it back once Redis answers, rather than hold it for the lease.
            self._keep_unreleased(keys.trials, token, ends_at)
            return None
        outcome = int(reply)
        if outcome == _LEASE_TAKEN:
            self._remember_lease(name, token, ends_at)
        elif outcome == _NO_TRIAL_NEEDED:
            self._remember_lease(name, None, ends_at)
        return outcome in (_LEASE_TAKEN, _NO_TRIAL_NEEDED)

    def release_trial(self, name: str) -> None:
        """Give back a slot this process leased with :meth:`acquire_trial`.

        Leases are interchangeable: the calling thread's own lease goes back
        first, otherwise this process's oldest.  Without a lease held, nothing
        is sent to Redis.

        The release is sent even during an outage backoff (a trial's outcome
        write may just have failed, while a release is a delete that a Redis out
        of memory still accepts).  A release that fails is sent again with this
        storage's next command that Redis answers, unless the lease has ended
        by then: the fleet's trials are never held back longer than that.
        """
        lease = self._forget_lease(name)
        if lease is None:
            return
        token, ends_at = lease
        key = self._keys(name).trials
        if self._run(lambda: self.client.zrem(key, token), urgent=True) is None:
            self._keep_unreleased(key, token, ends_at)

    # -- lifecycle -------------------------------------------------------------

    @property
    def available(self) -> bool:
        """False from a failed command until Redis answers again."""
        return self._unavailable_since is None

    @property
    def client(self) -> RedisClient:
        """The redis-py client; one built from a cluster URL is built (and connects) here.

        Raises:
            redis.exceptions.RedisClusterException: A cluster client reached none
                of its nodes (the storage counts it as Redis unavailable).
        """
        client = self._client
        if client is None:
            with self._client_lock:
                if self._client is None:
                    self._client = self._build_client()
                client = self._client
        return client

    def close(self) -> None:
        """Close the connections of a client this storage created from a URL.

        For a Sentinel URL, the connections to the sentinels too.
        """
        client = self._client
        if not self._owns_client or client is None:
            return
        client.close()
        pool = getattr(client, "connection_pool", None)
        if isinstance(pool, SentinelConnectionPool):
            for sentinel in pool.sentinel_manager.sentinels:
                sentinel.close()

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self._where}, prefix={self.prefix!r}, "
            f"sync_interval={self.sync_interval!r})"
        )

    # -- internals -------------------------------------------------------------

    @property
    def _key_ttl_ms(self) -> int:
        return _milliseconds(self.key_ttl)

    def _keys(self, name: str) -> _Keys:
        keys = self._keys_cache.get(name)
        if keys is None:
            base = f"{self.prefix}:{{{_hash_tag(name)}}}:"
            keys = _Keys(
                failures=base + "failures",
                open=base + "open",
                tripped=base + "tripped",
                trials=base + "trials",
                window=base + "window",
                closings=base + "closings",
                retry_budget=base + "retry_budget",
            )
            self._keys_cache[name] = keys
        return keys

    @staticmethod
    def _decode(reply: Any) -> SharedState:
        failures, open_pttl, tripped = (int(value) for value in reply)
        if open_pttl == -1:
            # No TTL: an operator opened it by hand, OPEN until they delete the key.
            # Infinite, so breakers refuse locally and notice the deletion at a sync
            # (0 made them go HALF_OPEN at once and ask Redis for a trial on every call).
            return SharedState(CircuitState.OPEN, open_remaining=math.inf)
        if open_pttl != -2:
            return SharedState(CircuitState.OPEN, open_remaining=max(open_pttl, 0) / 1000.0)
        if tripped:
            return SharedState(CircuitState.HALF_OPEN)
        return SharedState(CircuitState.CLOSED, failure_count=failures)

    def _remember_lease(self, name: str, token: str | None, ends_at: float) -> None:
        with self._lock:
            self._leases.setdefault(name, []).append((threading.get_ident(), token, ends_at))

    def _holds_no_slot_trial(self, name: str) -> bool:
        with self._lock:
            me = threading.get_ident()
            return any(
                owner == me and token is None for owner, token, _ in self._leases.get(name, ())
            )

    def _forget_lease(self, name: str) -> tuple[str, float] | None:
        """The ``(token, ends_at)`` of a lease to give back; ``None``: no slot is held."""
        with self._lock:
            held = self._leases.get(name)
            if not held:
                return None
            me = threading.get_ident()
            index = next((i for i, (owner, _, _) in enumerate(held) if owner == me), 0)
            _, token, ends_at = held.pop(index)
            if not held:
                del self._leases[name]
            return None if token is None else (token, ends_at)

    def _keep_unreleased(self, key: str, token: str, ends_at: float) -> None:
        """Keep a lease whose release failed, to give it back with the next answered command."""
        with self._lock:
            self._unreleased.append((key, token, ends_at))
            del self._unreleased[:-_MAX_UNRELEASED]

    def _release_unreleased(self) -> None:
        """Give back the leases whose release failed (one pipelined round trip)."""
        with self._lock:
            now = self._clock()
            # A lease that has ended in Redis by now needs nothing more.
            pending = [lease for lease in self._unreleased if lease[2] > now]
            self._unreleased.clear()
        if not pending:
            return
        try:
            pipeline = self.client.pipeline(transaction=False)
            for key, token, _ in pending:
                pipeline.zrem(key, token)
            pipeline.execute()
        except Exception as exc:  # the breaker must never see a storage error
            with self._lock:
                self._unreleased[:0] = pending
                del self._unreleased[:-_MAX_UNRELEASED]
            self._note_failure(exc, probing=False)

    def _init_process_state(self) -> None:
        self._lock = threading.Lock()
        #: name -> (thread ident, token or None for "no slot needed", when the lease
        #: ends on self._clock) per acquired trial.
        self._leases: dict[str, list[tuple[int, str | None, float]]] = {}
        #: (trials key, token, when the lease ends) of leases whose release failed.
        self._unreleased: list[tuple[str, str, float]] = []
        self._unavailable_since: float | None = None
        self._backoff = self.retry_backoff
        self._retry_at = 0.0

    def _after_fork(self) -> None:
        # The parent's leases are not the child's to give back, and a lock held
        # by a parent thread at fork time would never be released in the child.
        self._init_process_state()
        self._client_lock = threading.Lock()
        if self._owns_client and isinstance(self._client, RedisCluster):
            # A cluster client's topology locks may have been held by a parent
            # thread: the child builds a client of its own at its first command.
            # The parent's is dropped, not closed (that would shut its sockets).
            self._client = None

    def _run(self, command: Callable[[], _T], *, urgent: bool = False) -> _T | None:
        """Run one Redis command; ``None`` (and the outage bookkeeping) on failure.

        An ``urgent`` command is tried even while the outage backoff says not to
        (without claiming the next probe).  Once Redis answers, the leases whose
        release failed are given back.
        """
        probing = self._unavailable_since is not None and not urgent
        if probing and not self._probe_due():
            return None
        try:
            result = command()
        except Exception as exc:  # the breaker must never see a storage error
            self._note_failure(exc, probing=probing)
            return None
        if self._unavailable_since is not None:
            self._note_recovery()
        if self._unreleased:
            self._release_unreleased()
        return result

    def _probe_due(self) -> bool:
        """Whether this call may probe Redis during an outage (one caller at a time)."""
        with self._lock:
            if self._unavailable_since is None:
                return True
            now = self._clock()
            if now < self._retry_at:
                return False
            # Claim the probe: the other callers keep skipping until it fails.
            self._retry_at = now + self._backoff
            return True

    def _note_failure(self, exc: Exception, *, probing: bool) -> None:
        with self._lock:
            now = self._clock()
            if self._unavailable_since is None:
                self._unavailable_since = now
                self._backoff = self.retry_backoff
                first = True
            elif probing:
                self._backoff = min(self._backoff * 2.0, self.max_retry_backoff)
                first = False
            else:
                # A call already in flight when the outage began: the pause stands.
                return
            self._retry_at = now + self._backoff
            backoff = self._backoff
        if first:
            logger.warning(
                "Redis breaker storage %r unavailable (%s: %s); breakers carry on with "
                "their local state, next attempt in %.1f s",
                self,
                type(exc).__name__,
                exc,
                backoff,
            )

    def _note_recovery(self) -> None:
        with self._lock:
            since = self._unavailable_since
            if since is None:
                return
            self._unavailable_since = None
            self._backoff = self.retry_backoff
            self._retry_at = 0.0
            outage = self._clock() - since
        logger.info("Redis breaker storage %r available again after %.1f s", self, outage)


class _Script:
    """One of the Lua scripts, run by its SHA, or by its source where it is missing.

    redis-py's own ``Script`` reloads a missing script with ``SCRIPT LOAD``, which
    a cluster client sends to every primary: with one of them down, and on a
    replica just promoted (scripts are not replicated), that fails for every
    breaker.  ``EVAL`` goes to the one node that owns the keys and caches the
    script there: one extra round trip after a restart, failover or
    ``SCRIPT FLUSH``, instead of two.
    """

    def __init__(self, storage: RedisStorage, source: str) -> None:
        self._storage = storage
        self.source = source
        self.sha = hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest()

    def __call__(self, keys: Sequence[str], args: Sequence[int | str] = ()) -> Any:
        client = self._storage.client
        try:
            return client.evalsha(self.sha, len(keys), *keys, *args)
        except NoScriptError:
            return client.eval(self.source, len(keys), *keys, *args)
