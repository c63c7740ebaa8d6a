"""Fault injection, concurrency: readers of a model's HNSW index (`Recommender.load(model_dir, ann=True)`,
what `recommend --ann`, `index query` and `evaluate --ann` load) while `twotower index build` replaces
it. index.hnsw and index.json are two files replaced one after the other; a reader must get the old
pair or the new pair, never one build's graph with another's description (which reads as a damaged
index: "does not match its checksum: rebuild the index").
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from twotower.cli import main
from twotower.model.model_dir import load_model_dir
from twotower.retrieval import hnsw_files
from twotower.retrieval.recommend import Recommender, build_index, save_index

FLAGS = ["--silent", "--data.synthetic_users", "300", "--data.synthetic_items", "200", "--model.embedding_dim", "16",
         "--batches.batch_size", "256", "--train.epochs", "1", "--train.num_threads", "1"]
# Two builds whose files differ (M and ef), so that a mixed pair is always detectable.
BUILDS = ({"M": 8, "ef": 40}, {"M": 12, "ef": 60})


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("swap")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.delenv("TRITON_INTERPRET", raising=False)  # the PyTorch loss path, as for users (and quick)
        assert main(["train", "--out", str(out), *FLAGS]) == 0
    assert main(["index", "build", str(out / "model"), "--M", "8", "--ef", "40"]) == 0
    return out / "model"


def rebuild(model_dir: Path, build: dict) -> None:
    """What `twotower index build MODEL --M .. --ef ..` does."""
    trained = load_model_dir(model_dir)
    save_index(build_index(trained, M=build["M"], ef_construction=50, ef=build["ef"]), trained)


def read(model_dir: Path) -> tuple[int, int]:
    """What `recommend --ann` does: load the model with its index and answer; the (M, ef) it read."""
    recommender = Recommender.load(model_dir, ann=True)
    [answer] = recommender.recommend(["1"], 5)
    assert len(answer.items) == 5
    index = recommender._searcher
    return index.M, index.ef


def test_a_reader_during_the_swap_gets_one_build_whole(model_dir, monkeypatch) -> None:
    """Deterministic interleaving: the writer stops between the graph's rename and the description's,
    and a reader loads right then, in another thread. The writer goes on once the reader has
    finished or is waiting for the index's lock, so the reader's load is known to overlap the swap."""
    real_replace = os.replace
    import fcntl

    real_flock = fcntl.flock
    reader_waits, reader_done = threading.Event(), threading.Event()
    outcome: dict[str, object] = {}
    reader_thread: list[threading.Thread] = []

    def flock(fd, operation):  # a reader that would block on the writer's lock says so first
        if operation == fcntl.LOCK_SH and threading.current_thread() is not threading.main_thread():
            try:
                return real_flock(fd, operation | fcntl.LOCK_NB)
            except BlockingIOError:
                reader_waits.set()
        return real_flock(fd, operation)

    def reader() -> None:
        try:
            outcome["read"] = read(model_dir)
        except Exception as err:  # noqa: BLE001 (the test reports it)
            outcome["error"] = err
        finally:
            reader_done.set()

    def replace(src, dst, *args, **kwargs):
        real_replace(src, dst, *args, **kwargs)
        if Path(dst).name == hnsw_files.INDEX_FILE and not reader_thread:  # the graph is in place, not its description
            reader_thread.append(threading.Thread(target=reader))
            reader_thread[0].start()
            while not (reader_done.wait(0.01) or reader_waits.is_set()):
                pass

    monkeypatch.setattr(fcntl, "flock", flock)
    monkeypatch.setattr(os, "replace", replace)
    rebuild(model_dir, BUILDS[1])
    monkeypatch.undo()
    reader_thread[0].join(60)
    assert "error" not in outcome, outcome.get("error")
    assert reader_waits.is_set()  # the reader came while the files were being swapped, and waited for the pair
    assert outcome["read"] in {(b["M"], b["ef"]) for b in BUILDS}
    assert read(model_dir) == (BUILDS[1]["M"], BUILDS[1]["ef"])


@pytest.mark.slow
def test_readers_in_threads_while_the_index_is_rebuilt_30_times(model_dir) -> None:
    """Stress: three reader threads load and query the index over and over while it is rebuilt 30
    times, alternating two builds; every load succeeds and reads one build whole."""
    stop, errors, reads = threading.Event(), [], []

    def reader() -> None:
        while not stop.is_set():
            try:
                reads.append(read(model_dir))
            except Exception as err:  # noqa: BLE001 (the test reports it)
                errors.append(err)

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        for i in range(30):
            rebuild(model_dir, BUILDS[i % 2])
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
    assert errors == [], f"{len(errors)} of {len(errors) + len(reads)} loads failed; first: {errors[0]!r}"
    assert reads and set(reads) <= {(b["M"], b["ef"]) for b in BUILDS}
    print(f"\n{len(reads)} loads during 30 rebuilds, none failed")


READER = """
import json, sys
from pathlib import Path
from twotower.retrieval.recommend import Recommender
model_dir, stop = Path(sys.argv[1]), Path(sys.argv[2])
loads, errors = 0, []
while True:
    try:
        recommender = Recommender.load(model_dir, ann=True)
        assert len(recommender.recommend(["1"], 5)[0].items) == 5
        loads += 1
    except Exception as err:
        errors.append(repr(err))
    if loads + len(errors) == 1:
        print("ready", flush=True)
    if stop.exists():
        break
print(json.dumps({"loads": loads, "errors": errors[:3], "failed": len(errors)}), flush=True)
"""


@pytest.mark.slow
def test_reader_processes_while_the_index_is_rebuilt_20_times(model_dir, tmp_path) -> None:
    """The same across processes (the lock is the operating system's): two processes load and
    query the index over and over, as `recommend --ann` would, while it is rebuilt 20 times."""
    import json
    import subprocess
    import sys

    stop = tmp_path / "stop"
    root = Path(__file__).resolve().parents[2]
    readers = [subprocess.Popen([sys.executable, "-c", READER, str(model_dir), str(stop)], cwd=root,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}) for _ in range(2)]
    try:
        for reader in readers:
            assert reader.stdout.readline() == "ready\n", reader.stderr.read()
        for i in range(20):
            rebuild(model_dir, BUILDS[i % 2])
    finally:
        stop.touch()
        outcomes = [reader.communicate(timeout=120) for reader in readers]
    results = [json.loads(out.splitlines()[-1]) for out, _ in outcomes]
    assert all(r["failed"] == 0 for r in results), results
    assert all(r["loads"] > 0 for r in results)
    print(f"\n{sum(r['loads'] for r in results)} loads in 2 processes during 20 rebuilds, none failed")
