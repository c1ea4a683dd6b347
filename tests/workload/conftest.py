"""Fixtures for the workload tests: tiny inputs written for the tests, and the shipped table."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentflow.runtime.workload.durations import load_table

FIXTURES = Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def table():
    return load_table()


@pytest.fixture
def fixtures() -> Path:
    return FIXTURES
