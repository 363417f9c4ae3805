"""Fixtures shared by the server tests: one throwaway PostgreSQL cluster per session.

The cluster starts on first use only (a run of SQLite tests never starts it) and fails
loudly when PostgreSQL cannot be had: `spacesim.deps.ensure` installs it, nothing skips.
"""

from __future__ import annotations

import itertools
import urllib.parse
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import sql

from spacesim.server.pg_local import LocalPostgres

_names = itertools.count()


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """The session's cluster (about a second to initdb and start). Without fsync: on this
    shared machine every sync waits behind the others' disk traffic (seconds for a
    checkpoint), and the crash tests kill processes, not the kernel that holds the data."""
    with LocalPostgres(fsync=False) as pg:
        yield pg


@pytest.fixture(scope="session")
def _pg_tests(postgres: LocalPostgres) -> str:
    """The session's database. Its text sorts as English (ICU), not by byte, as on most
    installations: the store must ask for byte order where it counts."""
    return postgres.create_database("tests", icu_locale="en-US")


@pytest.fixture
def pg_url(_pg_tests: str) -> Callable[[], str]:
    """A factory of URLs, each of an empty schema (a namespace: under a millisecond to
    make, where a database takes a second of copying and syncing on this machine)."""

    def make() -> str:
        name = f"t{next(_names)}"
        with psycopg.connect(_pg_tests, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(name)))
        return f"{_pg_tests}?options={urllib.parse.quote(f'-csearch_path={name}')}"

    return make
