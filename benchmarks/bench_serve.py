"""`twotower serve` under load over HTTP on loopback: requests/s and p50 / p95 / p99 latency of
/recommend (one user, k = 100) at 1, 8 and 64 concurrent clients, exact (`ExactIndex`) and HNSW
search, micro-batching on and off in the same run, the batch-size histogram of each run, and a reload
of the model and its index under load with its failed requests counted.

The model: 1,000,000 items x 64-d trained-like vectors and 10,000 users with 20 seen items each
(`benchmarks/serve_model.py`), cached under --work; the HNSW index M = 16, ef_construction = 100,
ef = 100. The load generator (`benchmarks/serve_load.py`) runs in this process, on the same cores
as the server, so its own cost is inside every latency.

    python -m benchmarks.bench_serve                     # -> benchmarks/results/serve.md, .json, .png
    python -m benchmarks.bench_serve --items 100000 --duration 3     # a quick look
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from pathlib import Path
from typing import Any

import httpx

from benchmarks.plot_serve import plot_serve
from benchmarks.runner import RESULTS_DIR, markdown_table, write_results
from benchmarks.serve_load import TOKEN, batch_histogram, histogram_delta, run_load, server
from benchmarks.serve_model import ensure_index, make_model_dir

ITEMS, USERS, DIM, K = 1_000_000, 10_000, 64, 100
CONCURRENCY = (1, 8, 64)
HEADER = ["search", "batching", "clients", "requests", "req/s", "p50 ms", "p95 ms", "p99 ms", "failed",
          "queries per call", "calls by queries per call"]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    model = args.work / f"serve-{args.items}x{args.dim}"
    start = time.perf_counter()
    make_model_dir(model, num_items=args.items, num_users=args.users, dim=args.dim)
    built = ensure_index(model) if not args.no_hnsw else None
    print(f"model ready in {time.perf_counter() - start:.0f} s (HNSW build: {built and f'{built:.0f} s'})", flush=True)
    rows, reloads, load_before = [], [], os.getloadavg()
    for mode in ("exact",) if args.no_hnsw else ("exact", "hnsw"):
        for batching in (True, False):
            rows += _runs(model, mode, batching, args)
        reloads.append(_reload_run(model, mode, args))
    load = (load_before, os.getloadavg())
    table = _report(rows, reloads, args, built, load)
    extra = {"rows": rows, "reloads": reloads, "load_average": load,
             "settings": {k: str(v) for k, v in vars(args).items()}}
    path = write_results("serve", table, extra)
    print(table)
    print(f"wrote {path} and {plot_serve(RESULTS_DIR / 'serve.json')}")
    return 0


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--items", type=int, default=ITEMS)
    p.add_argument("--users", type=int, default=USERS)
    p.add_argument("--dim", type=int, default=DIM)
    p.add_argument("-k", type=int, default=K)
    p.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run (default: %(default)s)")
    p.add_argument("--reload-duration", type=float, default=30.0, help="seconds of load around the reloads")
    p.add_argument("--no-hnsw", action="store_true", help="exact search only (no index build)")
    p.add_argument("--threads", type=int, help="the server's threads per search call (default: all cores)")
    p.add_argument("--work", type=Path, default=Path("/tmp/twotower-bench-serve"), help="model cache")
    return p


def _flags(mode: str, batching: bool, threads: int | None) -> list[str]:
    return [*(["--ann"] if mode == "hnsw" else []), *([] if batching else ["--no-batching"]),
            *([] if threads is None else ["--threads", str(threads)])]


def _runs(model: Path, mode: str, batching: bool, args: argparse.Namespace) -> list[dict[str, Any]]:
    """One server, each concurrency in turn (after a warm-up)."""
    out = []
    with server(model, *_flags(mode, batching, args.threads), log=args.work / "server.log") as url:
        asyncio.run(run_load(url, users=args.users, k=args.k, concurrency=8, duration=2.0))
        for concurrency in args.concurrency:
            before = batch_histogram(url)
            load = asyncio.run(run_load(url, users=args.users, k=args.k, concurrency=concurrency,
                                        duration=args.duration))
            calls = histogram_delta(before, batch_histogram(url))
            out.append({"search": mode, "batching": batching, "clients": concurrency, "requests": load.requests,
                        "per_second": load.per_second, "p50": load.percentile_ms(50), "p95": load.percentile_ms(95),
                        "p99": load.percentile_ms(99), "failed": load.failures,
                        "per_call": len(load.latencies) / max(sum(calls.values()), 1), "calls": calls})
            print(_row(out[-1]), flush=True)
    return out


def _reload_run(model: Path, mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """8 clients for --reload-duration seconds while the model and its index are reloaded twice (and
    on, until a while after the second swap, so that the last version serves requests too)."""
    swaps: list[float] = []

    async def reload_twice(client: httpx.AsyncClient) -> None:
        for _ in range(2):
            await asyncio.sleep(args.reload_duration / 6)
            version = (await client.get("/healthz")).json()["model_version"]
            started = time.perf_counter()
            answer = await client.post("/admin/reload", json={}, headers={"Authorization": f"Bearer {TOKEN}"})
            if answer.status_code != 202:
                raise RuntimeError(f"reload refused: {answer.text}")
            while (await client.get("/healthz")).json()["model_version"] == version:
                await asyncio.sleep(0.05)
            swaps.append(time.perf_counter() - started)
        await asyncio.sleep(args.reload_duration / 6)  # the clients go on, on the last version too

    with server(model, *_flags(mode, True, args.threads), log=args.work / "server.log") as url:
        load = asyncio.run(run_load(url, users=args.users, k=args.k, concurrency=8, duration=args.reload_duration,
                                    during=reload_twice))
    result = {"search": mode, "requests": load.requests, "failed": load.failures, "versions": sorted(load.versions),
              "reload_seconds": swaps, "p99": load.percentile_ms(99), "per_second": load.per_second}
    print(result, flush=True)
    return result


def _row(r: dict[str, Any]) -> list[Any]:
    calls = ", ".join(f"{size}: {count}" for size, count in r["calls"].items())
    return [r["search"], "on" if r["batching"] else "off", r["clients"], r["requests"], f"{r['per_second']:.0f}",
            f"{r['p50']:.2f}", f"{r['p95']:.2f}", f"{r['p99']:.2f}", r["failed"], f"{r['per_call']:.1f}", calls]


def _report(rows: list[dict[str, Any]], reloads: list[dict[str, Any]], args: argparse.Namespace,
            built: float | None, load: tuple[tuple[float, ...], tuple[float, ...]]) -> str:
    index = f" HNSW index built in {built:.0f} s (M = 16, ef_construction = 100)." if built else ""
    lines = [f"{args.items:,} items x {args.dim}-d, {args.users:,} users with 20 seen items each (excluded), "
             f"k = {args.k}; /recommend with one random user per request; {args.duration:g} s per run after a "
             "warm-up; closed-loop clients (one keep-alive connection each, `benchmarks/serve_load.py`) in one "
             f"process on the same cores as the server (their cost is inside every latency).{index} "
             f"Search threads per call: {args.threads or 'all cores'}. The machine's load average (1, 5, 15 min) "
             f"was {_loads(load[0])} at the start and {_loads(load[1])} at the end (other jobs share its cores).",
             "", markdown_table(HEADER, [_row(r) for r in rows]), ""]
    for r in reloads:
        lines.append(f"Reload under load ({r['search']}, batching on, 8 clients, {args.reload_duration:g} s, two "
                     f"reloads of the model and its {'index' if r['search'] == 'hnsw' else 'exact scorer'}): "
                     f"{r['requests']} requests, **{r['failed']} failed**, versions served {r['versions']}, "
                     f"each swap {', '.join(f'{s:.1f}' for s in r['reload_seconds'])} s after the request, "
                     f"p99 {r['p99']:.1f} ms.")
    lines += ["", *_targets(rows, reloads)]
    return "\n".join(lines)


def _loads(values: tuple[float, ...]) -> str:
    return " / ".join(f"{v:.1f}" for v in values)


def _targets(rows: list[dict[str, Any]], reloads: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, each with its measured figure and whether it is met."""
    def find(search: str, batching: bool, clients: int) -> dict[str, Any] | None:
        return next((r for r in rows if (r["search"], r["batching"], r["clients"]) == (search, batching, clients)),
                    None)

    out = ["Targets (issue 17):", ""]
    for search, limit in (("hnsw", 5.0), ("exact", 15.0)):
        r = find(search, True, 1)
        if r:
            out.append(f"- {search}, 1 client: p99 {r['p99']:.2f} ms (target <= {limit:g} ms): "
                       f"{'met' if r['p99'] <= limit else 'NOT met'}")
    on, off = find("exact", True, 64), find("exact", False, 64)
    if on and off:
        ratio = on["per_second"] / max(off["per_second"], 1e-9)
        met = ratio >= 3 and on["p99"] <= off["p99"]
        out.append(f"- exact, 64 clients: batching {ratio:.1f}x the requests/s of one call per request, p99 "
                   f"{on['p99']:.1f} vs {off['p99']:.1f} ms (target >= 3x at no worse p99): "
                   f"{'met' if met else 'NOT met'}")
    failed = sum(r["failed"] for r in reloads)
    out.append(f"- reload under load: {failed} failed requests (target 0): {'met' if failed == 0 else 'NOT met'}")
    return out


if __name__ == "__main__":
    raise SystemExit(main())
