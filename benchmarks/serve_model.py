"""A servable model directory of any size without training one: trained-like vectors written
through the library's own `save_model_dir`, with its HNSW index, for `bench_serve`.

Training a 1M-item model on this machine would take longer than the benchmark itself, and serving
cost depends on the vectors' geometry, not on how they were learned: items drawn around cluster
centres with a long-tailed norm (popular items score higher, as after training with in-batch
negatives), users near the centres of the clusters they used, and each user's ~20 seen items to
exclude at query time.
"""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from twotower.data.types import Interactions
from twotower.data.vocab import Vocabulary
from twotower.model.model_dir import load_model_dir, save_model_dir
from twotower.model.two_tower import TwoTowerModel
from twotower.retrieval.recommend import build_index, has_index, save_index
from twotower.settings.model import ModelConfig

CLUSTERS = 1000
SEEN_PER_USER = 20


def trained_like(num_items: int, num_users: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(item vectors [N, D], user vectors [U, D], each user's cluster [U]) float32."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    item_cluster = rng.integers(CLUSTERS, size=num_items)
    items = centres[item_cluster] + 0.6 * rng.standard_normal((num_items, dim), dtype=np.float32) / np.sqrt(dim)
    items *= rng.lognormal(0.0, 0.3, size=(num_items, 1)).astype(np.float32)
    user_cluster = rng.integers(CLUSTERS, size=num_users)
    users = centres[user_cluster] + 0.4 * rng.standard_normal((num_users, dim), dtype=np.float32) / np.sqrt(dim)
    return items.astype(np.float32), users.astype(np.float32), user_cluster


def make_model_dir(path: Path, *, num_items: int, num_users: int, dim: int, seed: int = 0) -> Path:
    """Writes a dot-product model directory at `path` (kept: a second call with the same sizes reuses it)."""
    if (path / "config.json").is_file():
        trained = load_model_dir(path)
        model = trained.model
        if (model.num_items, model.num_users, model.config.embedding_dim) == (num_items, num_users, dim):
            return path
    items, users, user_cluster = trained_like(num_items, num_users, dim, seed)
    config = ModelConfig(embedding_dim=dim, scoring="dot")
    model = TwoTowerModel(config, num_users=num_users, num_items=num_items)
    with torch.no_grad():
        model.item_tower.id_embedding.weight[:num_items].copy_(torch.from_numpy(items))
        model.user_tower.id_embedding.weight[:num_users].copy_(torch.from_numpy(users))
    model.eval()
    rng = np.random.default_rng(seed + 1)
    seen_users = np.repeat(np.arange(num_users, dtype=np.int32), SEEN_PER_USER)
    seen_items = rng.integers(num_items, size=len(seen_users)).astype(np.int32)
    empty = Interactions(np.zeros(0, np.int32), np.zeros(0, np.int32))
    dataset = SimpleNamespace(num_users=num_users, user_vocab=Vocabulary(np.arange(1, num_users + 1)),
                              item_vocab=Vocabulary(np.arange(1, num_items + 1)),
                              train=Interactions(seen_users, seen_items), valid=empty, test=empty)
    return save_model_dir(path, model, dataset, {"benchmark": "trained-like vectors (benchmarks/serve_model.py)"}, {})


def ensure_index(path: Path, *, M: int = 16, ef_construction: int = 100, ef: int = 100) -> float | None:
    """Builds and saves the HNSW index of the model at `path` unless there is one; the build's seconds."""
    trained = load_model_dir(path)
    if has_index(trained):
        return None
    start = time.perf_counter()
    save_index(build_index(trained, M=M, ef_construction=ef_construction, ef=ef), trained)
    return time.perf_counter() - start
