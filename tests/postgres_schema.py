"""A fresh PostgreSQL schema per test, on the server TEST_POSTGRES_URL names; a skip where it names none.

Each test's store sees only its own schema (`options=-csearch_path=<schema>` in the URL), so
tests and concurrent runs never meet; the schema is dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from contextlib import contextmanager
from typing import Iterator

import pytest

from bench.process import with_search_path

SKIP_REASON = "set TEST_POSTGRES_URL=postgresql://user@host:5432/db to run the PostgreSQL store tests"


def server_url() -> str:
    """The server to test against, or a skip with the reason."""
    url = os.environ.get("TEST_POSTGRES_URL")
    if not url:
        pytest.skip(SKIP_REASON)
    return url


def run(url: str, sql: str, params: tuple = ()) -> list[tuple]:
    """One statement through an independent autocommit connection; its rows, if any."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        cursor = conn.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


@contextmanager
def temporary_schema() -> Iterator[str]:
    """Create an empty schema, yield a URL whose connections use it, drop it afterwards."""
    url = server_url()
    schema = f"test_{uuid.uuid4().hex[:16]}"
    run(url, f"CREATE SCHEMA {schema}")
    try:
        yield with_search_path(url, schema)
    finally:
        run(url, f"DROP SCHEMA {schema} CASCADE")
