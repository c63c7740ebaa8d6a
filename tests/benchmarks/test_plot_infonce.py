"""The GPU benchmark's plot is drawn from its JSON on any machine: check it on a synthetic result."""

import json
from pathlib import Path

from benchmarks.gpu.plot_infonce import plot_infonce


def _row(B: int, D: int, method: str, ms: float, peak: int, status: str = "ok") -> dict:
    return {"B": B, "M": 0, "N": B, "D": D, "options": False, "method": method, "status": status, "ms": ms,
            "peak": peak, "first_call_s": 0.1}


def test_plot_is_written_whole_next_to_the_json(tmp_path: Path) -> None:
    rows = [_row(b, d, m, b * d * f * 1e-6, b * d * 10) for b in (1024, 4096) for d in (64, 128)
            for m, f in (("fused kernel", 1.0), ("eager reference", 3.0), ("torch.compile(reference)", 2.0))]
    rows.append(
        {"B": 8192, "M": 0, "N": 8192, "D": 128, "options": False, "method": "eager reference", "status": "OOM"}
    )
    rows.append(_row(1024, 128, "fused kernel", 1.0, 5) | {"M": 4096, "N": 5120})  # extra negatives: not plotted
    rows.append(_row(2048, 64, "fused kernel", 1.0, None))  # no memory statistics (a CPU dry run)
    path = tmp_path / "infonce-gpu-test-card.json"
    path.write_text(json.dumps({"device": "Test Card", "timings": rows, "cublas_bf16_tflops": 700.0}))
    png = plot_infonce(path)
    assert png == tmp_path / "infonce-gpu-test-card.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["infonce-gpu-test-card.json", "infonce-gpu-test-card.png"]
