"""HTTP API benchmark: what `facescan serve` costs beyond its detector workers.

Measures, in this one run on this machine, with HOG (the server's defaults otherwise):
  (1) POST /detect throughput at 1 and 4 concurrent clients (images/s, p50/p95 latency)
      over the sample photographs (samples/: the package photos of FACTS.md), each client
      on one kept-alive connection, beside the same photos given directly to the same
      process layout: a DetectorPool (facescan_api.pool) of as many worker processes,
      each running work.detect as the server's workers do, called from the bench's own
      event loop. Both find the same number of faces per photo (checked). The two run
      in alternation (direct, HTTP, direct, HTTP...) so that the machine's drift weighs
      on both alike. The HTTP layer's cost = direct images/s / HTTP images/s - 1, the
      median over the alternations (goal <= 10 %); beside it the mean latency (p50 and
      p95 of 4 closed-loop clients over photos of unequal cost depend on how their
      requests happen to line up) and the CPU of the layer per image: the serve
      process's, less the bench process's own while it drives the direct pool (its
      memory-sampling threads left out), against the workers' CPU per image.
  (2) start-up to ready (launch of `facescan serve` to the first 200 from /health/ready),
      beside the pool alone starting its workers, and the peak memory (RSS of the serve
      process and its workers summed, sampled every 0.1 s) beside the direct pool's
      workers.
  (3) a bounded load run (--seconds, default 60; --load-clients, default 16) on a fresh
      server with the default queue (2 x workers): answers counted by status (only 200
      and 503 busy are expected; a 503 is retried after 50 ms, not after its
      Retry-After, to keep the pressure on), and the memory at its start and end.

Other processes on the machine skew these: the load average before and after is printed.

Usage: python bench/api_bench.py [--workers N] [--rounds 1] [--repeats 8] [--launches 3]
       [--seconds 60] [--load-clients 16] [--quick]
--workers defaults to the usable CPUs (at most 4); --quick: one of each, a 5 s load run.
Servers' logs are kept under bench/out/api/.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import secrets
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from facescan_api.pool import DetectorPool
from facescan_api.settings import ServeSettings
from facescan_api.work import Detected, WorkerConfig
from facescan_detector.backends.hardware import usable_cpus

BENCH = Path(__file__).resolve().parent
SAMPLES = BENCH.parent / "samples"
FACESCAN = Path(sys.executable).with_name("facescan")
OUT = BENCH / "out" / "api"
CLIENTS = (1, 4)
HTTP_COST_TARGET = 0.10
BUSY_PAUSE_S = 0.05


def photos() -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(SAMPLES.iterdir()) if p.suffix != ".md"}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def load() -> str:
    one, five, _ = os.getloadavg()
    return f"load average {one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


class Memory:
    """Samples the summed RSS of ``root`` and its descendants (or, with ``exclude``, of
    the root's descendants outside that process's tree) every 0.1 s, in a thread."""

    def __init__(self, root: int, *, own: bool = True, exclude: int | None = None) -> None:
        self.root, self.own, self.exclude = psutil.Process(root), own, exclude
        self.peak = self.peak_main = 0
        self.sampling_s = 0.0
        """CPU time of the sampling thread (in the bench's process)."""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def processes(self) -> list[psutil.Process]:
        try:
            found = self.root.children(recursive=True)
            if self.exclude is not None:
                other = psutil.Process(self.exclude)
                skip = {self.exclude} | {p.pid for p in other.children(recursive=True)}
                found = [p for p in found if p.pid not in skip]
        except psutil.Error:  # a process ended while listing: the next sample counts
            found = []
        return [self.root, *found] if self.own else found

    def cpu(self) -> tuple[float, float]:
        """CPU seconds so far of the root process and of the others, summed."""
        root, others = 0.0, 0.0
        for process in [self.root, *self.processes()]:
            try:
                times = process.cpu_times()
            except psutil.Error:
                continue
            if process.pid == self.root.pid:
                root = times.user + times.system
            else:
                others += times.user + times.system
        return root, others

    def now(self) -> int:
        total = 0
        for process in self.processes():
            try:
                rss = process.memory_info().rss
            except psutil.Error:
                continue
            total += rss
            if process.pid == self.root.pid:
                self.peak_main = max(self.peak_main, rss)
        self.peak = max(self.peak, total)
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.now()
            self.sampling_s = time.thread_time()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class Server:
    """`facescan serve` on a free port of 127.0.0.1 with a fresh API key; ``startup_s``
    from launch to the first 200 of /health/ready."""

    def __init__(self, workers: int, log: Path, extra: tuple[str, ...] = ()) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.key = secrets.token_urlsafe(24)
        env = {**os.environ, "FACESCAN_API_KEYS": self.key}
        command = [str(FACESCAN), "serve", "--port", str(self.port), "--workers", str(workers)]
        self.log = log
        started = time.monotonic()
        with log.open("wb") as out:
            self.process = subprocess.Popen([*command, *extra], env=env, stdout=out, stderr=out)
        self.memory = Memory(self.process.pid)
        while self.get("/health/ready") != 200:
            if self.process.poll() is not None or time.monotonic() - started > 120:
                self.stop()
                raise SystemExit(f"the server did not become ready:\n{log.read_text()}")
            time.sleep(0.02)
        self.startup_s = time.monotonic() - started

    def get(self, path: str) -> int | None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request("GET", path)
            return conn.getresponse().status
        except OSError:
            return None
        finally:
            conn.close()

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self.memory.stop()
        return code


def form(name: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), boundary


class Client:
    """One HTTP client on one kept-alive connection; the multipart bodies are built once."""

    def __init__(self, server: Server, images: dict[str, bytes]) -> None:
        self.server = server
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=300)
        self.bodies = {}
        for name, data in images.items():
            body, boundary = form(name, data)
            headers = {
                "Authorization": f"Bearer {server.key}",
                "Content-Type": f"multipart/form-data; boundary={boundary}",
            }
            self.bodies[name] = (body, headers)

    def detect(self, name: str) -> tuple[int, dict[str, str], bytes]:
        """Status (0: the connection failed), headers (lower-case names) and body."""
        body, headers = self.bodies[name]
        try:
            self.conn.request("POST", "/detect", body, headers)
            response = self.conn.getresponse()
            answer = {k.lower(): v for k, v in response.getheaders()}
            return response.status, answer, response.read()
        except (OSError, http.client.HTTPException):
            self.conn.close()  # reconnects at the next request
            return 0, {}, b""


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    wall_s: float = 0.0
    main_cpu_s: float = 0.0
    """CPU of the serve process, or of the bench's process for the direct pool."""
    workers_cpu_s: float = 0.0
    outside_s: list[float] = field(default_factory=list)
    """HTTP: each request's latency less the processing_ms its answer reports (upload
    read to answer), i.e. the time in uvicorn, the middleware, the form, the wire."""

    def rate(self) -> float:
        return len(self.latencies) / self.wall_s

    def line(self, clients: int, layout: str) -> str:
        p50, p95 = (1000 * percentile(self.latencies, q) for q in (0.5, 0.95))
        n, mean = len(self.latencies), 1000 * statistics.fmean(self.latencies)
        layer, workers = 1000 * self.main_cpu_s / n, 1000 * self.workers_cpu_s / n
        return (
            f"{clients:>7}  {layout:<12} {n:>6}  {self.rate():>8.2f}  {p50:>7.0f}  {p95:>7.0f}"
            f"  {mean:>7.0f}  {layer:>6.0f}  {workers:>7.0f}"
        )


def plan(names: list[str], clients: int, rounds: int) -> list[list[str]]:
    """Each client's photos: ``rounds`` times the set, each client starting elsewhere."""
    return [
        [names[(c + i) % len(names)] for i in range(rounds * len(names))] for c in range(clients)
    ]


def http_run(clients: list[Client], work: list[list[str]], faces: dict[str, int]) -> Run:
    run, errors = Run(), []
    lock = threading.Lock()

    def one(client: Client, names: list[str]) -> None:
        for name in names:
            started = time.monotonic()
            status, _, body = client.detect(name)
            took = time.monotonic() - started
            answer = json.loads(body) if status == 200 else {}
            found = len(answer["faces"]) if status == 200 else None
            with lock:
                run.latencies.append(took)
                run.outside_s.append(took - answer.get("processing_ms", 0) / 1000)
                if found != faces[name]:
                    errors.append(f"{name}: {status} with {found} faces, direct {faces[name]}")

    threads = [threading.Thread(target=one, args=pair) for pair in zip(clients, work, strict=False)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.wall_s = time.monotonic() - started
    if errors:
        raise SystemExit("HTTP answers differ from the direct detections:\n" + "\n".join(errors))
    return run


async def direct_run(pool: DetectorPool, images: dict[str, bytes], work: list[list[str]]) -> Run:
    run = Run()

    async def one(names: list[str]) -> None:
        for name in names:
            started = time.monotonic()
            outcome = await pool.detect(images[name])
            run.latencies.append(time.monotonic() - started)
            assert isinstance(outcome, Detected), outcome
            # as an HTTP client's next request comes a moment later: without this, the
            # task that just gave its worker back takes it again at once (asyncio.Queue
            # lets it, ahead of the waiter it woke), and the others starve
            await asyncio.sleep(0)

    started = time.monotonic()
    await asyncio.gather(*(one(names) for names in work))
    run.wall_s = time.monotonic() - started
    return run


@dataclass
class Load:
    counts: Counter[str] = field(default_factory=Counter)
    memory: list[tuple[float, int]] = field(default_factory=list)
    """(seconds into the run, RSS of serve + workers)."""
    retry_after: Counter[str] = field(default_factory=Counter)


def load_run(server: Server, images: dict[str, bytes], clients: int, seconds: float) -> Load:
    """``clients`` threads posting the photos until ``seconds`` passed: answers by status,
    and the memory at the start and at each sixth of the run."""
    result, lock = Load(), threading.Lock()
    started = time.monotonic()
    deadline = started + seconds
    names = list(images)

    def one(offset: int) -> None:
        client, i = Client(server, images), offset
        while time.monotonic() < deadline:
            status, headers, _ = client.detect(names[i % len(names)])
            with lock:
                result.counts[str(status) if status else "connection error"] += 1
                if status == 503:
                    result.retry_after[headers.get("retry-after", "none")] += 1
            if status == 503:
                time.sleep(BUSY_PAUSE_S)
            else:
                i += 1

    result.memory.append((0.0, server.memory.now()))
    threads = [threading.Thread(target=one, args=(c,)) for c in range(clients)]
    for thread in threads:
        thread.start()
    for sixth in range(1, 7):
        time.sleep(max(0.0, started + seconds * sixth / 6 - time.monotonic()))
        result.memory.append((time.monotonic() - started, server.memory.now()))
    for thread in threads:
        thread.join()
    return result


def worker_config(settings: ServeSettings) -> WorkerConfig:
    """The workers `facescan serve` starts with these settings (facescan_api.run.serve)."""
    return WorkerConfig(
        model=settings.model,
        upsample=settings.hog_upsample,
        threads=settings.threads or max(1, usable_cpus() // settings.workers),
        model_dir=settings.model_dir,
        max_dimension=settings.max_dimension,
    )


def startups(runner: asyncio.Runner, workers: int, launches: int) -> tuple[list[float], ...]:
    """Launch -> ready of `facescan serve`, and of the pool alone, ``launches`` times each,
    alternating; every server must stop with 0 on SIGTERM."""
    config = worker_config(ServeSettings(workers=workers))
    served, pooled = [], []
    for n in range(launches):
        started = time.monotonic()
        pool = DetectorPool(config, workers=workers, queue=0, timeout_s=300)
        runner.run(pool.start())
        pooled.append(time.monotonic() - started)
        pool.close()
        server = Server(workers, OUT / f"server-start-{n}.log")
        served.append(server.startup_s)
        if (code := server.stop()) != 0:
            raise SystemExit(f"the server exited {code}:\n{server.log.read_text()}")
    return served, pooled


@dataclass
class Throughput:
    runs: dict[tuple[int, str], list[Run]]
    """By (clients, layout): one run per alternation."""
    faces: dict[str, int]
    peak: int
    peak_main: int
    direct_peak: int


def throughput(
    runner: asyncio.Runner, args: argparse.Namespace, images: dict[str, bytes]
) -> Throughput:
    """Direct pool and HTTP in alternation at each client count; merged per layout."""
    settings = ServeSettings(workers=args.workers)
    queue = max(settings.queue_size(), max(CLIENTS))  # no 503 in these runs
    pool = DetectorPool(worker_config(settings), workers=args.workers, queue=queue, timeout_s=300)
    runner.run(pool.start())
    server = Server(args.workers, OUT / "server-throughput.log", ("--queue", str(queue)))
    direct_memory = Memory(os.getpid(), own=False, exclude=server.process.pid)
    names = list(images)
    runs: dict[tuple[int, str], list[Run]] = {}
    try:
        faces = {}
        for name, data in images.items():  # warm-up, and the faces HTTP must find
            outcome = runner.run(pool.detect(data))
            assert isinstance(outcome, Detected), (name, outcome)
            faces[name] = len(outcome.faces)
        http_run([Client(server, images)], [names], faces)
        for _ in range(args.repeats):
            for clients in CLIENTS:
                work = plan(names, clients, args.rounds)
                before = cpu(direct_memory, server)
                direct = runner.run(direct_run(pool, images, work))
                direct.main_cpu_s, direct.workers_cpu_s = cpu(direct_memory, server, before)
                runs.setdefault((clients, "direct"), []).append(direct)
                connections = [Client(server, images) for _ in range(clients)]
                before = server.memory.cpu()
                over_http = http_run(connections, work, faces)
                after = server.memory.cpu()
                over_http.main_cpu_s = after[0] - before[0]
                over_http.workers_cpu_s = after[1] - before[1]
                runs.setdefault((clients, "HTTP"), []).append(over_http)
    finally:
        code = server.stop()
        direct_memory.stop()
        pool.close()
    if code != 0:
        raise SystemExit(f"the server exited {code}:\n{server.log.read_text()}")
    return Throughput(runs, faces, server.memory.peak, server.memory.peak_main, direct_memory.peak)


def cpu(
    direct: Memory, server: Server, before: tuple[float, float] = (0.0, 0.0)
) -> tuple[float, float]:
    """The bench's process (less its samplers' threads) and the direct pool's workers:
    CPU seconds since ``before``."""
    main, workers = direct.cpu()
    main -= direct.sampling_s + server.memory.sampling_s
    return main - before[0], workers - before[1]


def merge(runs: list[Run]) -> Run:
    return Run(
        latencies=[t for run in runs for t in run.latencies],
        wall_s=sum(run.wall_s for run in runs),
        main_cpu_s=sum(run.main_cpu_s for run in runs),
        workers_cpu_s=sum(run.workers_cpu_s for run in runs),
        outside_s=[t for run in runs for t in run.outside_s],
    )


def mb(n: float) -> str:
    return f"{n / 2**20:,.0f} MB"


def report_throughput(found: Throughput, args: argparse.Namespace, config: WorkerConfig) -> float:
    """Prints the table; the worst HTTP cost (median of the alternations' ratios)."""
    print(
        f"POST /detect, hog (upsample {config.upsample}, max dimension {config.max_dimension}), "
        f"{args.workers} worker(s) x {config.threads} thread(s); {len(found.faces)} photos "
        f"({sum(found.faces.values())} faces) sent {args.rounds} time(s) per client in each of "
        f"{args.repeats} alternation(s)"
    )
    print("                                                           CPU ms per image")
    print(" clients  layout       images  images/s   p50 ms   p95 ms  mean ms   layer  workers")
    worst = -1.0
    for clients in CLIENTS:
        directs, over_https = found.runs[clients, "direct"], found.runs[clients, "HTTP"]
        direct, over_http = merge(directs), merge(over_https)
        print(direct.line(clients, "direct pool"))
        print(over_http.line(clients, "HTTP"))
        pooled = direct.rate() / over_http.rate() - 1
        paired = statistics.median(
            d.rate() / h.rate() - 1 for d, h in zip(directs, over_https, strict=True)
        )
        mean = statistics.fmean(over_http.latencies) / statistics.fmean(direct.latencies) - 1
        layer = (over_http.main_cpu_s - direct.main_cpu_s) / len(over_http.latencies)
        work = direct.workers_cpu_s / len(direct.latencies)
        worst = max(worst, paired)
        verdict = "PASS" if paired <= HTTP_COST_TARGET else "FAIL"
        print(
            f"         HTTP layer's cost: throughput {paired:+.1%} (median of the "
            f"alternations; {pooled:+.1%} over all), mean latency {mean:+.1%}, CPU "
            f"{1000 * layer:+.0f} ms/image = {layer / work:+.1%} of the workers' "
            f"(goal <= {HTTP_COST_TARGET:.0%}): {verdict}"
        )
        outside = statistics.median(over_http.outside_s)
        share = outside / statistics.fmean(over_http.latencies)
        print(
            f"         time outside the /detect handler (latency - processing_ms): median "
            f"{1000 * outside:.1f} ms per request = {share:.1%} of the mean latency"
        )
    return worst


def report_load(load: Load, args: argparse.Namespace) -> int:
    """Prints the load run; how many answers were neither 200 nor 503."""
    total = sum(load.counts.values())
    by_status = ", ".join(f"{status}: {n}" for status, n in sorted(load.counts.items()))
    retry = ", ".join(f"{value} s: {n}" for value, n in sorted(load.retry_after.items()))
    print(
        f"load: {args.load_clients} clients for {args.seconds:g} s, default queue "
        f"{ServeSettings(workers=args.workers).queue_size()}: {total} answers ({by_status}); "
        f"{load.counts['200'] / args.seconds:.2f} images/s answered 200; Retry-After ({retry})"
    )
    (_, first), (_, last) = load.memory[1], load.memory[-1]
    timeline = ", ".join(f"{s:.1f} s {mb(rss)}" for s, rss in load.memory)
    print(f"  memory of serve + workers: {timeline}")
    print(f"  growth from the first sixth of the run to its end: {last / first - 1:+.1%}")
    return total - load.counts["200"] - load.counts["503"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=min(4, usable_cpus()))
    parser.add_argument("--rounds", type=int, default=1, help="times each client sends the set")
    parser.add_argument("--repeats", type=int, default=8, help="direct/HTTP alternations")
    parser.add_argument("--launches", type=int, default=3, help="start-ups measured")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the load run")
    parser.add_argument("--load-clients", type=int, default=16)
    parser.add_argument("--quick", action="store_true", help="a short run (smoke test)")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.repeats, args.launches = 1, 1, 1
        args.seconds = min(args.seconds, 5.0)
    for name in [name for name in os.environ if name.startswith("FACESCAN_")]:
        del os.environ[name]  # the defaults, for the servers and the direct pool alike
    OUT.mkdir(parents=True, exist_ok=True)
    images = photos()
    print(f"before: {load()}")
    with asyncio.Runner() as runner:
        served, pooled = startups(runner, args.workers, args.launches)
        found = throughput(runner, args, images)

    loaded = Server(args.workers, OUT / "server-load.log")
    try:
        names = list(images)
        warm = [Client(loaded, images) for _ in range(args.workers)]
        http_run(warm, plan(names, args.workers, 2), found.faces)  # every worker busy twice
        result = load_run(loaded, images, args.load_clients, args.seconds)
    finally:
        load_code = loaded.stop()

    worst = report_throughput(found, args, worker_config(ServeSettings(workers=args.workers)))
    serve_s, pool_s = statistics.median(served), statistics.median(pooled)
    print(
        f"start-up to ready (median of {args.launches}): facescan serve {serve_s:.2f} s "
        f"(launch -> /health/ready 200); its pool alone {pool_s:.2f} s (ratio "
        f"{serve_s / pool_s:.2f}x)"
    )
    print(
        f"peak memory (RSS summed, sampled): serve + workers {mb(found.peak)} (serve process "
        f"{mb(found.peak_main)}); the direct pool's workers {mb(found.direct_peak)}"
    )
    unexpected = report_load(result, args)
    print(f"after: {load()}")
    ok = worst <= HTTP_COST_TARGET and unexpected == 0 and load_code == 0
    print(
        f"RESULT: {'all targets met' if ok else 'TARGET MISSED'} (worst HTTP cost "
        f"{worst:.1%}; {unexpected} answers neither 200 nor 503; load server exit {load_code})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
