"""Helpers shared by the test suites: fake clocks, fake storages, servers, guards.

Fixtures live in ``tests/conftest.py``; the classes and functions behind them,
and the ones tests use directly, live here so a reader finds each once.
"""

from pathlib import Path
from typing import Final

__all__ = ["PROJECT_ROOT"]

#: The checkout: where ``python -m gunicorn`` and child Pythons run from.
PROJECT_ROOT: Final = Path(__file__).resolve().parents[2]
