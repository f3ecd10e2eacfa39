"""Real functions-framework processes on loopback, what /proc says about them, and a bounded load client.

Every server listens on 127.0.0.1 at a free port, and every load loop stops after a fixed count
of requests or a fixed time, whichever comes first. Processes are ended by their own id.
"""

from __future__ import annotations

import contextlib
import http.client
import multiprocessing
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator
import uuid
from urllib.parse import quote, urlsplit, urlunsplit

import requests

from bench import start_timeline

ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
LOOPBACK = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return probe.getsockname()[1]


@dataclass
class Server:
    """A functions-framework process serving `target` from `source` on a loopback port."""

    process: subprocess.Popen
    port: int
    spawned_at: float  # time.perf_counter() just before the spawn
    log_path: Path
    companions: list[subprocess.Popen] = field(default_factory=list)  # stopped with it (a latency proxy)

    @property
    def base(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def pids(self) -> list[int]:
        """The gunicorn master and its workers."""
        return [self.process.pid, *children_of(self.process.pid)]

    def stop(self) -> None:
        for companion in self.companions:
            if companion.poll() is None:
                companion.kill()
                companion.wait(timeout=5)
        if self.process.poll() is None:
            self.process.terminate()  # gunicorn's master stops its workers on SIGTERM
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)

    def output(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def first_cores(count: int) -> list[int]:
    """The first `count` of the cores this process may run on (`count` between 1 and all of them)."""
    cores = sorted(os.sched_getaffinity(0))
    if not 1 <= count <= len(cores):
        raise ValueError(f"{count} cores asked for; this process may run on {len(cores)}")
    return cores[:count]


class CpuCapUnavailable(RuntimeError):
    """This process cannot make a CPU-capped control group here (not root, or no CPU controller it may use)."""


@dataclass(frozen=True)
class CpuCap:
    """A control group of its own whose processes share `vcpu` of a CPU: the kernel's CFS bandwidth control lets
    them run `vcpu × period` of CPU time in every period, then holds them until the next one. A fractional Cloud Run
    vCPU, emulated (how Cloud Run itself enforces one is not documented to this detail).

    Made by `create`, joined by `spawn(..., cap=)` before Python starts (every process the server forks stays in
    it), ended by `remove` once its processes have exited."""

    path: Path  # the group's folder
    version: int  # 1 (the `cpu` hierarchy of cgroup v1) or 2 (the unified hierarchy)
    vcpu: float
    period_us: int

    @classmethod
    def create(cls, vcpu: float, period_us: int = 100_000) -> CpuCap:
        if not 0 < vcpu <= len(os.sched_getaffinity(0)):
            raise ValueError(f"vcpu must be above 0 and at most this process's {len(os.sched_getaffinity(0))} cores,"
                             f" not {vcpu}")
        base, version = _own_cpu_group()
        path = base / f"bench-cap-{os.getpid()}-{time.monotonic_ns()}"
        quota_us = max(1000, round(vcpu * period_us))  # the kernel's smallest quota is 1 ms
        try:
            path.mkdir()
            if version == 1:
                (path / "cpu.cfs_period_us").write_text(str(period_us))
                (path / "cpu.cfs_quota_us").write_text(str(quota_us))
            else:
                (path / "cpu.max").write_text(f"{quota_us} {period_us}")
        except OSError as exc:
            if path.exists():
                path.rmdir()
            raise CpuCapUnavailable(f"cannot make a CPU-capped group under {base}: {exc}") from exc
        return cls(path, version, quota_us / period_us, period_us)

    def enter(self) -> None:
        """Move the calling process into the group (a child's `preexec_fn`, before it starts Python)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def throttling(self) -> dict[str, float]:
        """So far: the periods the group ran in, how many of them ended with it held, and for how long in all (ms)."""
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if line.strip())
        held_ms = int(stat["throttled_time"]) / 1e6 if self.version == 1 else int(stat["throttled_usec"]) / 1e3
        return {"periods": int(stat["nr_periods"]), "throttled": int(stat["nr_throttled"]),
                "throttled_ms": round(held_ms, 1)}

    def remove(self) -> None:
        """Delete the group; its processes must have exited (a group with processes in it cannot be removed)."""
        for _ in range(50):  # an exited process leaves its group a moment after its parent has reaped it
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.02)
        self.path.rmdir()


def _own_cpu_group() -> tuple[Path, int]:
    """The folder of this process's own control group in the hierarchy that has the CPU controller, and that
    hierarchy's version; `CpuCapUnavailable` where there is none this process may write to."""
    own = {}  # hierarchy's controllers ("" for v2) -> this process's path in it
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        own[controllers] = path
    for line in Path("/proc/self/mounts").read_text().splitlines():
        _, mount, fstype, options, *_ = line.split()
        if fstype == "cgroup" and "cpu" in options.split(","):
            group = next((path for controllers, path in own.items() if "cpu" in controllers.split(",")), None)
            if group is not None:
                base, version = Path(mount) / group.lstrip("/"), 1
                break
    else:
        mount = next((line.split()[1] for line in Path("/proc/self/mounts").read_text().splitlines()
                      if line.split()[2] == "cgroup2"), None)
        if mount is None or "" not in own:
            raise CpuCapUnavailable("no cgroup hierarchy with a CPU controller is mounted here")
        base, version = Path(mount) / own[""].lstrip("/"), 2
        controllers = base / "cgroup.subtree_control"
        try:
            if "cpu" not in controllers.read_text().split():
                controllers.write_text("+cpu")
        except OSError as exc:
            raise CpuCapUnavailable(f"the CPU controller cannot be handed to groups under {base}: {exc}") from exc
    if not os.access(base, os.W_OK):
        raise CpuCapUnavailable(f"{base} is not writable by this process (run as root, or in a delegated group)")
    return base, version


def spawn(target: str, source: Path, env: dict[str, str], log_dir: Path, threads: int | None = None,
          timeline: bool = False, cores: list[int] | None = None, cap: CpuCap | None = None) -> Server:
    """Start `functions-framework --target TARGET --source SOURCE` on a free loopback port.

    `timeline`: through `bench.start_timeline`, whose clocks inside the processes write the start's steps to the log
    (`start_timeline.events(server.log_path.read_text())`). `cores`: the server (gunicorn's master and every worker
    it forks) runs on these cores only, set before Python starts, as an instance with that many vCPUs runs. `cap`:
    and in that CPU-capped group, as an instance of a fractional vCPU runs."""
    port = free_port()
    process_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    if threads is not None:
        process_env["THREADS"] = str(threads)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{target}-{port}.log"
    log = open(log_path, "wb")
    module = "bench.start_timeline" if timeline else "functions_framework"
    started = time.perf_counter()
    if timeline:
        process_env[start_timeline.SPAWNED_VARIABLE] = repr(started)
    process = subprocess.Popen(
        [sys.executable, "-m", module, "--target", target, "--source", str(source),
         "--host", LOOPBACK, "--port", str(port)],
        cwd=ROOT, env=process_env, stdout=log, stderr=subprocess.STDOUT,
        preexec_fn=None if cores is None and cap is None else (lambda: _confine(cores, cap)),
    )
    log.close()
    return Server(process, port, started, log_path)


def _confine(cores: list[int] | None, cap: CpuCap | None) -> None:
    if cores is not None:
        os.sched_setaffinity(0, cores)
    if cap is not None:
        cap.enter()


STORAGE_BUCKET = "bench-models"


def start_storage_emulator(log_dir: Path, rtt_ms: float = 0.0) -> tuple[Server, dict[str, str]]:
    """gcp-storage-emulator on a free loopback port (in memory, with STORAGE_BUCKET), and the environment that
    points a gs:// model store at it (google-cloud-storage and our own reads both take STORAGE_EMULATOR_HOST).

    `rtt_ms` > 0: the environment points at a relay in front of it that adds half of that to each direction
    (bench/latency_proxy.py), so each request takes that much longer, as against a server farther away."""
    server = _start_on_free_port(
        "storage-emulator", lambda port: [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", LOOPBACK,
                                          "--port", str(port), "--in-memory", "--default-bucket", STORAGE_BUCKET],
        log_dir, log_dir)
    endpoint = server.base
    if rtt_ms > 0:
        try:
            relay = start_relay(server.port, rtt_ms, log_dir)
        except RuntimeError:
            server.stop()
            raise
        server.companions.append(relay.process)
        endpoint = relay.base
    return server, {"MODEL_STORE_URL": f"gs://{STORAGE_BUCKET}/models", "STORAGE_EMULATOR_HOST": endpoint}


@contextlib.contextmanager
def emulator_host(endpoint: str) -> Iterator[None]:
    """STORAGE_EMULATOR_HOST set to `endpoint` in this process (for google-cloud-storage's publishing and our own
    reads), and as it was again afterwards."""
    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = endpoint
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = saved


def start_relay(upstream_port: int, rtt_ms: float, log_dir: Path) -> Server:
    """bench/latency_proxy.py on a free loopback port in front of `upstream_port` on loopback, adding half of `rtt_ms` to
    each direction: a server that far away. Returned as a Server of its own (its `port`, `stop()`)."""
    return _start_on_free_port(
        "latency-proxy", lambda port: [sys.executable, "-m", "bench.latency_proxy", "--listen", str(port), "--upstream",
                                       f"{LOOPBACK}:{upstream_port}", "--delay-ms", str(rtt_ms / 2)],
        ROOT, log_dir)


def with_search_path(url: str, schema: str) -> str:
    """A PostgreSQL URL whose connections use `schema` (its `options=-csearch_path=...`)."""
    separator = "&" if "?" in url else "?"
    return f"{url}{separator}options={quote(f'-csearch_path={schema}')}"


@contextlib.contextmanager
def postgres_of_its_own(log: Callable[[str], None] = print) -> Iterator[None]:
    """TEST_POSTGRES_URL names, while inside, a schema of its own on the same server, dropped on leaving (every process
    started meanwhile inherits it). Each run's probes write rows and erase them, and on a server whose autovacuum is
    off, as on the machines of bench/PERFORMANCE.md's round 41, the dead rows left in a shared schema run after run
    slowed every insert: an order's write took 3.9 ms at p50 in a fresh database, 46.5 in the shared one three runs
    later, and 3.3 after a VACUUM. Nothing changes where the variable is unset or the server cannot be reached (the
    PostgreSQL sections then say why they skipped, as before)."""
    url = os.environ.get("TEST_POSTGRES_URL", "")
    if not url.startswith(("postgresql://", "postgres://")):
        yield
        return
    import psycopg

    schema = f"bench_{uuid.uuid4().hex[:12]}"
    try:
        with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
    except psycopg.Error as exc:
        log(f"TEST_POSTGRES_URL: no schema of its own for this run ({exc}); the shared one is used")
        yield
        return
    os.environ["TEST_POSTGRES_URL"] = with_search_path(url, schema)
    try:
        yield
    finally:
        os.environ["TEST_POSTGRES_URL"] = url
        try:  # a schema left behind must not cost the run its results
            with psycopg.connect(url, autocommit=True, connect_timeout=10) as conn:
                conn.execute(f"DROP SCHEMA {schema} CASCADE")
        except psycopg.Error as exc:
            log(f"TEST_POSTGRES_URL: schema {schema} not dropped ({exc}); drop it by hand")


def relayed_postgres_url(url: str, rtt_ms: float, log_dir: Path, stack: contextlib.ExitStack) -> str:
    """`url` (PostgreSQL on loopback) as reached through a relay `rtt_ms` away (`start_relay`), or itself when
    `rtt_ms` is 0; `stack` stops the relay."""
    if rtt_ms <= 0:
        return url
    parts = urlsplit(url)
    if parts.hostname not in (LOOPBACK, "localhost"):
        raise SystemExit(f"--rtt-ms relays to PostgreSQL on loopback only, not {parts.hostname}")
    relay = start_relay(parts.port or 5432, rtt_ms, log_dir)
    stack.callback(relay.stop)
    user = parts.netloc.rpartition("@")[0]
    return urlunsplit(parts._replace(netloc=(user + "@" if user else "") + f"{LOOPBACK}:{relay.port}"))


def _start_on_free_port(name: str, command: Callable[[int], list[str]], cwd: Path, log_dir: Path) -> Server:
    """`command(port)` started on a free loopback port, its output in `log_dir`/NAME-PORT.log; returned once the port
    accepts connections."""
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}-{port}.log"
    with open(log_path, "wb") as log:
        started = time.perf_counter()
        child = subprocess.Popen(command(port), cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    server = Server(child, port, started, log_path)
    _wait_for_port(port, child, server, log_path)
    return server


def _wait_for_port(port: int, started: subprocess.Popen, server: Server, log_path: Path) -> None:
    """Until `port` accepts; if `started` ends or 30 s pass first, stop `server` and raise with `log_path`'s end."""
    deadline = time.monotonic() + 30.0
    while True:
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            if started.poll() is not None or time.monotonic() > deadline:
                server.stop()
                output = log_path.read_text(errors="replace")[-4000:] if log_path.exists() else ""
                raise RuntimeError(f"{started.args[2]} did not start on port {port}:\n{output}") from None
            time.sleep(0.05)


@dataclass(frozen=True)
class Startup:
    listen_s: float  # spawn → the port accepts connections (imports done, gunicorn bound)
    first_ok_s: float  # spawn → the first 200 from `path`


def start_steps(server: Server, startup: Startup) -> dict[str, float]:
    """For a server spawned with `timeline=True`: each step of its start in ms since the spawn (`start_timeline`), with
    the client's own "listening" and "first 200"."""
    return {**start_timeline.events(server.log_path.read_text(errors="replace")),
            "listening": startup.listen_s * 1000, "first 200": startup.first_ok_s * 1000}


def wait_until_serving(server: Server, path: str, timeout: float = 120.0) -> Startup:
    """Poll the port, then `path`, until a 200; raise with the server's output if it never comes."""
    deadline = server.spawned_at + timeout
    while True:
        try:
            with socket.create_connection((LOOPBACK, server.port), timeout=0.5):
                listen = time.perf_counter() - server.spawned_at
                break
        except OSError:
            if server.process.poll() is not None or time.perf_counter() > deadline:
                raise RuntimeError(f"functions-framework did not start:\n{server.output()}") from None
            time.sleep(0.002)
    with requests.Session() as session:
        while True:
            try:
                response = session.get(server.base + path, timeout=timeout)
                if response.status_code == 200:
                    return Startup(listen, time.perf_counter() - server.spawned_at)
                raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:500]}")
            except requests.ConnectionError:
                if server.process.poll() is not None or time.perf_counter() > deadline:
                    raise RuntimeError(f"functions-framework never answered:\n{server.output()}") from None
                time.sleep(0.002)


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(entry))
    return found


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM (peak RSS) and RssAnon (RSS but file pages) from /proc/<pid>/status, Pss from smaps_rollup; KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon"):
                out[key] = int(value.split()[0])
    try:
        with open(f"/proc/{pid}/smaps_rollup") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    out["Pss"] = int(line.split()[1])
    except OSError:
        pass
    return out


def instance_memory_mib(server: Server) -> dict[str, float]:
    """Memory of the whole instance (master + workers), MiB.

    rss_sum double-counts pages the fork shares; pss_sum splits shared pages between the
    processes and is what a container's memory limit sees most closely.
    """
    per = {pid: memory_kib(pid) for pid in server.pids()}
    master = per[server.process.pid]
    workers = [m for pid, m in per.items() if pid != server.process.pid]
    return {
        "master_rss_mib": round(master["VmRSS"] / 1024, 1),
        "worker_rss_mib": round(sum(w["VmRSS"] for w in workers) / 1024, 1),
        "worker_peak_rss_mib": round(sum(w["VmHWM"] for w in workers) / 1024, 1),
        "worker_anon_rss_mib": round(sum(w.get("RssAnon", 0) for w in workers) / 1024, 1),
        "rss_sum_mib": round(sum(m["VmRSS"] for m in per.values()) / 1024, 1),
        "pss_sum_mib": round(sum(m.get("Pss", m["VmRSS"]) for m in per.values()) / 1024, 1),
    }


def peak_upper_bound_mib(memory: dict[str, float]) -> float:
    """An instance's peak from `instance_memory_mib`: the master's RSS plus its worker's peak RSS (an upper bound:
    the fork shares pages)."""
    return round(memory["master_rss_mib"] + memory["worker_peak_rss_mib"], 1)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes so far."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total / CLOCK_TICKS


@dataclass
class LoadResult:
    latencies_s: list[float] = field(default_factory=list)
    errors: int = 0
    wall_s: float = 0.0
    statuses: dict[int, int] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return len(self.latencies_s)


Request = tuple[str, str, "bytes | None", dict[str, str]]  # method, path, body, headers
RequestOf = Callable[[int], Request]


def run_load(port: int, request_of: RequestOf, concurrency: int, max_requests: int, max_seconds: float,
             ok: int = 200) -> LoadResult:
    """`concurrency` client processes send requests `request_of(i)` for i < max_requests, until done or out of time.

    Each client is a process of its own (forked, so `request_of` needs no pickling) holding one
    keep-alive `http.client` connection: clients never queue behind one another's GIL, and a request
    costs the client a fraction of what `requests` costs, so on a two-core machine the load generator
    takes less of the CPU the server needs. Client k sends requests k, k + concurrency, ...
    Latency is measured per request in the client; a non-`ok` status or a connection error counts
    as an error and is not timed.
    """
    context = multiprocessing.get_context("fork")
    go = context.Event()
    pipes, clients = [], []
    for k in range(concurrency):
        receive, send = context.Pipe(duplex=False)
        client = context.Process(target=_client, args=(port, request_of, range(k, max_requests, concurrency),
                                                        max_seconds, ok, go, send), daemon=True)
        client.start()
        send.close()
        pipes.append(receive)
        clients.append(client)
    result = LoadResult()
    started = time.perf_counter()
    go.set()
    for receive, client in zip(pipes, clients):
        if receive.poll(max_seconds + 60):
            latencies, errors, statuses = receive.recv()
            result.latencies_s.extend(latencies)
            result.errors += errors
            for status, count in statuses.items():
                result.statuses[status] = result.statuses.get(status, 0) + count
        else:
            result.errors += 1
        client.join(5)
    result.wall_s = time.perf_counter() - started
    return result


def _client(port: int, request_of: RequestOf, indices: range, max_seconds: float, ok: int, go, send) -> None:
    latencies, errors, statuses = [], 0, {}
    connection = http.client.HTTPConnection(LOOPBACK, port, timeout=30)
    go.wait()
    deadline = time.perf_counter() + max_seconds
    for index in indices:
        if time.perf_counter() >= deadline:
            break
        method, path, body, headers = request_of(index)
        begin = time.perf_counter()
        try:
            connection.request(method, path, body=body, headers=headers)
            response = connection.getresponse()
            response.read()
        except (OSError, http.client.HTTPException):
            errors += 1
            connection.close()  # reconnects on the next request
            continue
        elapsed = time.perf_counter() - begin
        statuses[response.status] = statuses.get(response.status, 0) + 1
        if response.status == ok:
            latencies.append(elapsed)
        else:
            errors += 1
    connection.close()
    send.send((latencies, errors, statuses))
    send.close()
