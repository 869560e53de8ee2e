"""Cost of counting a request for /metrics, per request.

Every request passes `app.metrics.MetricsMiddleware`, which calls
`service.metrics.record_request` (a counter increment and a histogram observation) in
prometheus-client's multiprocess mode (what `hpscale serve` runs: values in memory-mapped
files) or in-process. This drives a trivial ASGI app with and without that call around it
(no sockets: the figure is the counting's own CPU; bench/ may not import app/) and prints
microseconds per request beside the same run's baseline, the bare app. For scale: a cached
recommendation costs ~1 ms of server time end to end (bench/recommend.py).

    python bench/metrics_overhead.py                 # multiprocess mode (as `hpscale serve`)
    python bench/metrics_overhead.py --in-process
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=50_000, help="requests per variant and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (each times both variants)")
    parser.add_argument("--in-process", action="store_true", help="no multiprocess directory")
    args = parser.parse_args()
    if not args.in_process:  # must be set before prometheus_client is imported
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="hpscale-bench-metrics-")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from service.metrics import record_request

    class Route:
        path = "/v1/studies/{name}/recommendation"

    async def bare(scope, receive, send):  # type: ignore[no-untyped-def]
        scope["route"] = Route
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"{}"})

    async def counted(scope, receive, send):  # type: ignore[no-untyped-def]
        # What MetricsMiddleware does around the app: time it, record method/route/status.
        started = time.perf_counter()
        await bare(scope, receive, send)
        record_request(scope["method"], scope["route"].path, 200, time.perf_counter() - started)

    async def drive(app, n: int) -> float:  # type: ignore[no-untyped-def]
        async def receive():  # type: ignore[no-untyped-def]
            return {"type": "http.request", "body": b""}

        async def send(message):  # type: ignore[no-untyped-def]
            return None

        started = time.perf_counter()
        for _ in range(n):
            await app({"type": "http", "method": "GET", "path": "/x"}, receive, send)
        return (time.perf_counter() - started) / n * 1e6

    mode = "in-process" if args.in_process else "multiprocess (as hpscale serve)"
    print(f"metrics middleware, {mode}: µs per request ({args.requests:,} requests per round)")
    results: dict[str, list[float]] = {"bare app (baseline)": [], "with record_request": []}
    for _ in range(args.rounds):
        results["bare app (baseline)"].append(asyncio.run(drive(bare, args.requests)))
        results["with record_request"].append(asyncio.run(drive(counted, args.requests)))
    for name, values in results.items():
        print(f"  {name:<24} best {min(values):7.2f}   median {sorted(values)[len(values) // 2]:7.2f}")
    overhead = min(results["with record_request"]) - min(results["bare app (baseline)"])
    print(f"  overhead per request: {overhead:.2f} µs")
    if not args.in_process:
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)


if __name__ == "__main__":
    main()
