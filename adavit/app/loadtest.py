"""`adavit loadtest --url URL --clients N --seconds S`: N gradio_client threads against the real /analyze.

Each client sends the example photos with random slider settings (fine ratio, keeps and mode on the
sliders' steps, seeded per client), so the model really runs instead of answering from its caches.
Reported: throughput, p50/p95/p99 latency of answered requests, errors by kind, requests refused
because the server's queue is full (gradio answers 503 when `max_size` events already wait; that is
the app protecting its memory, counted apart from errors), and the server's resident memory (RSS)
sampled every second through psutil, from `--pid` or the process listening on the URL's port.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from .analysis import MODE_CHOICES

EXAMPLES = Path(__file__).resolve().parents[2] / "assets" / "examples"
QUEUE_FULL = ("refused: the server's queue is full (gradio answers 503 while max_size events wait; the app "
              "bounds its queue so that a burst cannot exhaust memory)")
STEPS = [round(0.05 * i, 2) for i in range(2, 21)]  # the sliders' 0.05 steps, 0.1 .. 1.0


@dataclass(frozen=True)
class Outcome:
    start_s: float  # since the test began
    latency_s: float
    status: str  # "ok", "refused" or "error"
    kind: str = ""  # error class, or why it was refused


def classify(e: Exception) -> tuple[str, str]:
    from gradio_client.exceptions import AppError
    from gradio_client.utils import QueueError

    if isinstance(e, QueueError):
        return "refused", QUEUE_FULL
    if isinstance(e, AppError):  # the app's own gr.Error: a request it rejected with a message
        return "error", f"AppError: {str(e)[:120]}"
    return "error", f"{type(e).__name__}: {str(e)[:120]}"


def client_loop(url: str, seed: int, images: list[str], t0: float, deadline: float, out: list[Outcome],
                lock: threading.Lock) -> None:
    from gradio_client import Client, handle_file

    rng = random.Random(seed)
    try:
        client = Client(url, verbose=False)
    except Exception as e:  # noqa: BLE001 - a client that cannot connect is an error like any other
        with lock:
            out.append(Outcome(time.perf_counter() - t0, 0.0, *classify(e)))
        return
    while time.perf_counter() < deadline:
        args = (handle_file(rng.choice(images)), rng.choice(STEPS[:-2]), rng.choice(STEPS), rng.choice(STEPS),
                rng.choice(MODE_CHOICES))
        t = time.perf_counter()
        try:
            client.predict(*args, api_name="/analyze")
            result = ("ok", "")
        except Exception as e:  # noqa: BLE001 - every failure is counted by kind
            result = classify(e)
        with lock:
            out.append(Outcome(t - t0, time.perf_counter() - t, *result))


def server_pid(url: str) -> int | None:
    """The process listening on the URL's port (None without psutil, or when it cannot see the socket)."""
    try:
        import psutil
    except ImportError:
        return None

    port = urlparse(url).port or 80
    try:
        for c in psutil.net_connections("tcp"):
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
                return c.pid
    except psutil.AccessDenied:
        return None
    return None


def sample_rss(pid: int, t0: float, stop: threading.Event, out: list[tuple[float, float]], every: float = 1.0) -> None:
    import psutil

    proc = psutil.Process(pid)
    while not stop.is_set():
        try:
            out.append((time.perf_counter() - t0, proc.memory_info().rss / 2**20))
        except psutil.Error:
            return
        stop.wait(every)


def summarize(outcomes: list[Outcome], rss: list[tuple[float, float]], seconds: float, clients: int) -> dict:
    ok = np.array([o.latency_s for o in outcomes if o.status == "ok"]) * 1000
    p = {f"p{q}": round(float(np.percentile(ok, q)), 1) if len(ok) else None for q in (50, 95, 99)}
    window = min(60.0, seconds / 2)  # "first minute" and "last minute" (halves of shorter runs)
    first = [m for t, m in rss if t < window]
    last = [m for t, m in rss if t >= seconds - window]
    memory = None
    if first and last:
        memory = {"first_window_max_mb": round(max(first), 1), "last_window_max_mb": round(max(last), 1),
                  "growth_mb": round(max(last) - max(first), 1), "window_s": window,
                  "samples": [(round(t, 1), round(m, 1)) for t, m in rss]}
    return {
        "clients": clients, "seconds": seconds, "requests": len(outcomes),
        "answered": int(len(ok)), "refused": sum(o.status == "refused" for o in outcomes),
        "errors": sum(o.status == "error" for o in outcomes),
        "errors_by_kind": dict(Counter(o.kind for o in outcomes if o.status == "error")),
        "refused_by_reason": dict(Counter(o.kind for o in outcomes if o.status == "refused")),
        "throughput_per_s": round(len(ok) / seconds, 2), "latency_ms": {**p, "mean": round(float(ok.mean()), 1)
                                                                        if len(ok) else None},
        "rss": memory,
    }


def run(url: str, clients: int, seconds: float, images: list[str], pid: int | None = None, seed: int = 0) -> dict:
    """Drive /analyze from `clients` threads for `seconds`; the summary dict (see `summarize`)."""
    if clients < 1 or seconds <= 0:
        raise ValueError(f"--clients must be >= 1 and --seconds > 0, got {clients} and {seconds}")
    outcomes: list[Outcome] = []
    rss: list[tuple[float, float]] = []
    lock, stop = threading.Lock(), threading.Event()
    t0 = time.perf_counter()
    deadline = t0 + seconds
    pid = pid or server_pid(url)
    if pid and importlib.util.find_spec("psutil") is None:
        print("note: psutil is not installed, so the server's RSS is not sampled", file=sys.stderr)
        pid = None
    sampler = threading.Thread(target=sample_rss, args=(pid, t0, stop, rss), daemon=True) if pid else None
    if sampler:
        sampler.start()
    threads = [threading.Thread(target=client_loop, args=(url, seed + i, images, t0, deadline, outcomes, lock),
                                daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 120)  # a request in flight at the deadline still finishes
    stop.set()
    if sampler:
        sampler.join()
    out = summarize(outcomes, rss, time.perf_counter() - t0, clients)
    out.update(url=url, pid=pid, images=[Path(i).name for i in images], outcomes=[asdict(o) for o in outcomes])
    return out


def report(s: dict) -> str:
    lat = s["latency_ms"]
    lines = [f"{s['clients']} clients, {s['seconds']:.0f} s against {s['url']}: {s['requests']} requests, "
             f"{s['answered']} answered, {s['refused']} refused, {s['errors']} errors",
             f"throughput {s['throughput_per_s']} answered/s; latency p50 {lat['p50']} ms, p95 {lat['p95']} ms, "
             f"p99 {lat['p99']} ms"]
    lines += [f"  error   {n} x {k}" for k, n in s["errors_by_kind"].items()]
    lines += [f"  refused {n} x {k}" for k, n in s["refused_by_reason"].items()]
    m = s["rss"]
    lines.append("server RSS: not sampled (pass --pid, or install psutil and run where the server's port is visible)"
                 if m is None else
                 f"server RSS (pid {s['pid']}): max {m['first_window_max_mb']} MB in the first {m['window_s']:.0f} s, "
                 f"{m['last_window_max_mb']} MB in the last {m['window_s']:.0f} s: growth {m['growth_mb']:+.1f} MB")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="adavit loadtest", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default="http://127.0.0.1:7860/", help="the running app")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=120)
    p.add_argument("--pid", type=int, default=None, help="the server's process id for RSS (default: the process "
                   "listening on the URL's port)")
    p.add_argument("--images", nargs="*", default=None, help="photos to send (default: the app's examples)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the summary, every request and the RSS samples here")
    args = p.parse_args(argv)
    images = args.images or sorted(str(f) for f in EXAMPLES.glob("*.jpg"))
    try:
        s = run(args.url, args.clients, args.seconds, images, args.pid, args.seed)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report(s))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(s, indent=2))
        print(f"wrote {args.json}")
    return 0 if s["errors"] == 0 else 1
