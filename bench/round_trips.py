"""Round trips to a server, counted on the wire: a TCP relay on loopback, in this process, that delays every chunk
by a fixed time each way and counts how often the client waited for the server.

    with RoundTripCounter(5432) as relay:      # postgresql://...@127.0.0.1:{relay.port}/...
        store.apply(delivery, changes)          # on a connection made through the relay
        relay.turns                             # round trips since the last relay.reset()

A turn is a chunk from the client that reaches the relay after the relay has handed the client some of the
server's answer since the last turn: the client sent it in reply. Statements a client sends without reading
their results (PostgreSQL's pipeline mode) reach the relay before any answer has come back, because each
answer takes a whole round trip of 2 × delay, so they count once, with the statement that waits. What the count
cannot tell apart is a client that stops for longer than that round trip between two sends it did not wait for:
the delay (`delay_s`, 50 ms a way by default: a margin of 0.1 s) is that margin. Around what is counted (set-up,
checks), `with relay.undelayed():` hands chunks on at once, behind any still delayed, so each round trip there does
not wait 0.1 s for nothing. `bench.delivery_probe` and the round-trip tests of `tests/test_store_postgres.py` count
with it; `select_one_ms` is the round trip the PostgreSQL probes
report (`bench.delivery_probe`, `bench.backfill_probe`, `bench.answer_probe`); `add_distance_argument`, `summary`,
`http_lines` and `print_and_write` are the answer and delivery probes' shared `--rtt-ms`, figures and output.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import socket
import statistics
import threading
import time

LOOPBACK = "127.0.0.1"


def select_one_ms(conn, times: int = 50) -> float:
    """The median of `times` `SELECT 1`s on a psycopg connection, in ms: what one round trip to the server costs."""
    taken = []
    for _ in range(times):
        begin = time.perf_counter()
        conn.execute("SELECT 1").fetchone()
        taken.append(time.perf_counter() - begin)
    return round(statistics.median(taken) * 1e3, 3)


def add_distance_argument(parser) -> None:
    """`--rtt-ms` as the answer and delivery probes take it (`process.relayed_postgres_url`)."""
    parser.add_argument("--rtt-ms", type=float, default=2.5,
                        help="PostgreSQL this far away too, through a relay (default 2.5; 0: loopback only)")


def print_and_write(results: dict, text: str, out, name: str) -> None:
    """A probe's table printed, and with `out` (a folder) its results as NAME.json and the table as NAME.md."""
    print(text)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
        (out / f"{name}.md").write_text(text + "\n")


def summary(taken: list[float]) -> dict:
    """The median and the slowest of some milliseconds."""
    ordered = sorted(taken)
    return {"median_ms": round(statistics.median(ordered), 3), "max_ms": round(ordered[-1], 3)}


def http_lines(http: dict, kinds, first_column: str) -> list[str]:
    """The table of a probe's `--http` section: each kind's median (and slowest) beside the bare function's."""
    lines = ["", f"Over HTTP (`main.py` under functions-framework, the store {http['over']}), one request at a time:",
             "", f"| {first_column} | ours | the bare function | ours − floor |", "|---|---|---|---|"]
    for kind in kinds:
        ours, floor = http[kind]["median_ms"], http[kind]["floor_median_ms"]
        lines.append(f"| {kind} | {ours} ms (at most {http[kind]['max_ms']}) | {floor} ms | {ours - floor:.2f} ms |")
    return lines


class RoundTripCounter:
    def __init__(self, upstream_port: int, delay_s: float = 0.05, upstream_host: str = LOOPBACK):
        self._upstream = (upstream_host, upstream_port)
        self._delay = delay_s
        self._lock = threading.Lock()
        self._turns = 0
        self._listener = socket.create_server((LOOPBACK, 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._closed = False
        threading.Thread(target=self._accept, name="round-trips-accept", daemon=True).start()

    @property
    def turns(self) -> int:
        with self._lock:
            return self._turns

    def reset(self) -> None:
        with self._lock:
            self._turns = 0

    @contextlib.contextmanager
    def undelayed(self):
        """While inside, each chunk is handed on as soon as it is read (still in order: never before one read earlier
        and still delayed), and turns are still counted; for set-up and checks around what is counted, whose own round
        trips would otherwise each wait 2 × delay_s. Count only outside it (`reset`, the work, `turns`)."""
        saved, self._delay = self._delay, 0.0
        try:
            yield self
        finally:
            self._delay = saved

    def url(self, url: str) -> str:
        """A PostgreSQL URL on loopback (`postgresql://user@127.0.0.1:5432/db`) with its port made the relay's."""
        from urllib.parse import urlsplit, urlunsplit

        parts = urlsplit(url)
        user = parts.netloc.rpartition("@")[0]
        return urlunsplit(parts._replace(netloc=(user + "@" if user else "") + f"{LOOPBACK}:{self.port}"))

    def close(self) -> None:
        self._closed = True
        self._listener.close()
        for sock in self._sockets:
            try:
                sock.close()
            except OSError:
                pass

    def __enter__(self) -> RoundTripCounter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._upstream)
            except OSError:  # the server is down: the client sees its connection closed, as it would directly
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._sockets += [client, server]
            state = {"answered": True}  # the connection's first chunk is a turn
            _Direction(self, client, server, state, from_client=True)
            _Direction(self, server, client, state, from_client=False)

    def _from_client(self, state: dict) -> None:
        with self._lock:
            if state["answered"]:
                self._turns += 1
                state["answered"] = False

    def _to_client(self, state: dict) -> None:
        with self._lock:
            state["answered"] = True


class _Direction:
    """One direction of a relayed connection: a reader that stamps each chunk and a writer that hands it on
    `delay` later, in order."""

    def __init__(self, relay: RoundTripCounter, source: socket.socket, sink: socket.socket, state: dict,
                 from_client: bool):
        self._relay, self._source, self._sink, self._state = relay, source, sink, state
        self._from_client = from_client
        self._queue: list[tuple[float, int, bytes]] = []
        self._order = itertools.count()
        self._last_due = 0.0  # due times never go back: a chunk read undelayed waits for those delayed before it
        self._ready = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._write, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                chunk = self._source.recv(1 << 16)
            except OSError:
                chunk = b""
            if chunk and self._from_client:
                self._relay._from_client(self._state)
            with self._ready:
                self._last_due = max(self._last_due, time.monotonic() + self._relay._delay)
                heapq.heappush(self._queue, (self._last_due, next(self._order), chunk))
                self._ready.notify()
            if not chunk:
                return

    def _write(self) -> None:
        while True:
            with self._ready:
                while not self._queue:
                    self._ready.wait()
                due, _, chunk = self._queue[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._ready.wait(wait)
                    continue
                heapq.heappop(self._queue)
            if chunk and not self._from_client:  # marked first: the client may answer before sendall returns
                self._relay._to_client(self._state)
            try:
                if not chunk:
                    self._sink.shutdown(socket.SHUT_WR)
                    return
                self._sink.sendall(chunk)
            except OSError:
                return
