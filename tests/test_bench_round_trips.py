"""bench.round_trips counts how often a client waited for PostgreSQL, on the wire: known answers by hand."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from bench.round_trips import RoundTripCounter
from tests.postgres_schema import server_url


@pytest.fixture
def relay_and_url():
    url = server_url()
    with RoundTripCounter(urlsplit(url).port or 5432) as relay:
        yield relay, relay.url(url)


def test_each_statement_read_before_the_next_is_a_round_trip_and_a_pipeline_is_one(relay_and_url):
    import psycopg

    relay, url = relay_and_url
    with psycopg.connect(url, autocommit=True) as conn:
        # Act
        relay.reset()
        one_by_one = [conn.execute("SELECT %s::int", (n,)).fetchone()[0] for n in range(3)]
        apart = relay.turns
        relay.reset()
        with conn.pipeline():
            cursors = [conn.execute("SELECT %s::int", (n,)) for n in range(3)]
        together = [cursor.fetchone()[0] for cursor in cursors]
        pipelined = relay.turns
        relay.reset()
        with conn.transaction():  # BEGIN, the statement, COMMIT: each waited for
            conn.execute("SELECT 1").fetchone()
        in_transaction = relay.turns

    # Assert
    assert one_by_one == together == [0, 1, 2]
    assert (apart, pipelined, in_transaction) == (3, 1, 3)


def test_a_pipeline_that_reads_a_result_midway_waits_twice(relay_and_url):
    import psycopg

    relay, url = relay_and_url
    with psycopg.connect(url, autocommit=True) as conn:
        # Act
        relay.reset()
        with conn.pipeline():
            first = conn.execute("SELECT 1").fetchone()[0]  # read before the next is sent: a wait
            second = conn.execute("SELECT 2")
            third = conn.execute("SELECT 3")
        values = (first, second.fetchone()[0], third.fetchone()[0])

    # Assert
    assert values == (1, 2, 3) and relay.turns == 2


def test_a_url_through_the_relay_keeps_its_user_database_and_options():
    with RoundTripCounter(5432) as relay:
        url = relay.url("postgresql://postgres@127.0.0.1:5432/test?options=-csearch_path%3Dx")

    assert url == f"postgresql://postgres@127.0.0.1:{relay.port}/test?options=-csearch_path%3Dx"


def test_undelayed_chunks_never_pass_a_delayed_one_and_the_count_after_them_is_exact():
    # Arrange: an echo server on loopback behind a relay that delays each chunk 0.2 s each way
    import socket
    import threading
    import time

    echo = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        conn, _ = echo.accept()
        with conn:
            while data := conn.recv(1024):
                conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()

    def read(sock: socket.socket, size: int) -> bytes:
        got = b""
        while len(got) < size:
            got += sock.recv(size - len(got))
        return got

    with echo, RoundTripCounter(echo.getsockname()[1], delay_s=0.2) as relay, \
            socket.create_connection(("127.0.0.1", relay.port)) as client:
        # Act: "a" delayed; "b", read by the relay 0.05 s later undelayed, while "a" still waits
        client.sendall(b"a")
        time.sleep(0.05)
        with relay.undelayed():
            client.sendall(b"b")
            echoed = read(client, 2)
        relay.reset()
        for chunk in (b"c", b"d"):  # two sends, each waiting for its echo: two round trips
            client.sendall(chunk)
            echoed += read(client, 1)
        counted = relay.turns

    # Assert: in the order sent, and each waited-for send counted once
    assert echoed == b"abcd"
    assert counted == 2
