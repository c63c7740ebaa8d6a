"""The serving benchmark's pieces that do not need a 1M-item server: the batch histogram arithmetic,
the targets verdicts, the plot, and the model directory it serves (loadable, with its index)."""

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.bench_serve import _targets
from benchmarks.plot_serve import plot_serve
from benchmarks.serve_load import histogram_delta
from benchmarks.serve_model import ensure_index, make_model_dir
from twotower.retrieval.recommend import Recommender


def test_histogram_delta_counts_calls_per_bucket() -> None:
    before = {"1.0": 5, "2.0": 5, "4.0": 6, "8.0": 6, "+Inf": 6}
    after = {"1.0": 7, "2.0": 10, "4.0": 12, "8.0": 15, "+Inf": 16}
    # calls between the readings: <=1: 2, 2: 5 - 2 = 3, 3-4: 6 - 5 = 1, 5-8: 9 - 6 = 3, above 8: 10 - 9 = 1
    assert histogram_delta(before, after) == {"1": 2, "2": 3, "3-4": 1, "5-8": 3, "9-+Inf": 1}


def row(search, batching, clients, per_second, p99):
    return {"search": search, "batching": batching, "clients": clients, "per_second": per_second, "p50": p99 / 2,
            "p95": p99 * 0.9, "p99": p99, "requests": 100, "failed": 0, "per_call": 1.0, "calls": {"1": 100}}


def test_targets_say_met_or_not_met_with_the_figure() -> None:
    rows = [row("hnsw", True, 1, 900, 4.0), row("exact", True, 1, 300, 16.0), row("exact", True, 64, 1200, 80.0),
            row("exact", False, 64, 300, 90.0)]
    lines = _targets(rows, [{"failed": 0}, {"failed": 2}])
    assert "p99 4.00 ms (target <= 5 ms): met" in lines[2]
    assert "p99 16.00 ms (target <= 15 ms): NOT met" in lines[3]
    assert "batching 4.0x" in lines[4] and lines[4].endswith(": met")
    assert lines[5] == "- reload under load: 2 failed requests (target 0): NOT met"


def test_plot_is_written_whole_next_to_the_json(tmp_path: Path) -> None:
    rows = [row(s, b, c, 100.0 * c, 5.0 * c) for s in ("exact", "hnsw") for b in (True, False) for c in (1, 8, 64)]
    path = tmp_path / "serve.json"
    path.write_text(json.dumps({"rows": rows}))
    assert plot_serve(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["serve.json", "serve.png"]
    path.write_text(json.dumps({"rows": [{**rows[0], "p99": "fast"}]}))
    with pytest.raises(ValueError):
        plot_serve(path, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_the_benchmark_model_serves_its_vectors(tmp_path: Path) -> None:
    directory = make_model_dir(tmp_path / "m", num_items=3000, num_users=50, dim=16)
    assert ensure_index(directory) > 0 and ensure_index(directory) is None  # built once
    exact = Recommender.load(directory).recommend([1, 50], k=10)
    approximate = Recommender.load(directory, ann=True).recommend([1, 50], k=10)
    for e, a in zip(exact, approximate, strict=True):
        assert len(e.items) == 10 and len(set(e.items.tolist()) & set(a.items.tolist())) >= 8
    trained = Recommender.load(directory).trained
    assert np.all(np.diff(trained.seen.indptr) <= 20) and trained.seen.indptr[-1] > 0


HOLDER = """
import sys, time
from pathlib import Path
from benchmarks.serve_load import server
with server(Path(sys.argv[1]), log=Path(sys.argv[2])) as url:
    print(url, flush=True)
    time.sleep(120)
"""


@pytest.mark.slow
def test_sigterm_to_the_benchmark_stops_its_server(tmp_path: Path) -> None:
    """Stopping the benchmark (SIGTERM) must not leave its `twotower serve` child running."""
    import os
    import signal
    import subprocess
    import sys

    import httpx

    directory = make_model_dir(tmp_path / "m", num_items=500, num_users=20, dim=8)
    root = Path(__file__).resolve().parents[2]
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(directory), str(tmp_path / "serve.log")],
                              cwd=root, stdout=subprocess.PIPE, text=True)
    try:
        url = holder.stdout.readline().strip()
        assert url.startswith("http://127.0.0.1:"), (tmp_path / "serve.log").read_text()
        assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
        holder.send_signal(signal.SIGTERM)
        assert holder.wait(timeout=90) == 128 + signal.SIGTERM
        with pytest.raises(httpx.TransportError):
            httpx.get(f"{url}/healthz", timeout=5)
    finally:
        if holder.poll() is None:
            os.kill(holder.pid, signal.SIGKILL)
            holder.wait()
