"""Forbid real network and process I/O where a test claims to need none.

Unit tests run with :func:`forbid_real_io` active (``tests/unit/conftest.py``):
a socket that connects or binds, a name lookup, or a child process started
through :mod:`subprocess`, :mod:`multiprocessing` or :mod:`os` raises
:class:`RealIOError` and fails the test, even when the code under test
swallows the exception.  A unit test that secretly needs a server thus fails
instead of passing slowly or flakily.
"""

from __future__ import annotations

import contextlib
import multiprocessing.util
import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["RealIOError", "forbid_real_io"]


class RealIOError(RuntimeError):
    """Raised by a socket or process call a unit test must not make.

    Deliberately not an :class:`OSError`: requests and urllib3 would turn an
    ``OSError`` into a ``ConnectionError`` that a test may expect.
    """


@contextlib.contextmanager
def forbid_real_io() -> Iterator[list[str]]:
    """Make socket connect/bind and process creation raise :class:`RealIOError`.

    Yields:
        The list of forbidden calls attempted so far, so a caller can fail a
        test whose code caught the error.
    """
    attempts: list[str] = []

    def refuse(what: str) -> Callable[..., Any]:
        def refused(*args: object, **kwargs: object) -> Any:
            attempts.append(what)
            raise RealIOError(
                f"{what} in a unit test: a test that needs a real server or process "
                "belongs in tests/integration/"
            )

        return refused

    patches: list[tuple[object, str, object]] = [
        (socket.socket, "connect", refuse("socket.connect")),
        (socket.socket, "connect_ex", refuse("socket.connect_ex")),
        (socket.socket, "bind", refuse("socket.bind")),
        # A name lookup may ask a DNS server: network I/O as well.
        (socket, "getaddrinfo", refuse("socket.getaddrinfo")),
        # Every subprocess function goes through Popen; multiprocessing's spawn
        # and forkserver start methods through spawnv_passfds, its fork method
        # through os.fork.
        (subprocess.Popen, "_execute_child", refuse("subprocess.Popen")),
        (multiprocessing.util, "spawnv_passfds", refuse("multiprocessing spawn")),
        (os, "fork", refuse("os.fork")),
        (os, "forkpty", refuse("os.forkpty")),
        (os, "posix_spawn", refuse("os.posix_spawn")),
        (os, "posix_spawnp", refuse("os.posix_spawnp")),
        (os, "system", refuse("os.system")),
    ]
    originals = [(owner, name, getattr(owner, name)) for owner, name, _ in patches]
    try:
        for owner, name, replacement in patches:
            setattr(owner, name, replacement)
        yield attempts
    finally:
        for owner, name, original in originals:
            setattr(owner, name, original)
