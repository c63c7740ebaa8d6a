"""The pipeline twotower replaces, in plain PyTorch: the end-to-end benchmark's baseline.

Written the way the reference pipeline was: the CSV read row by row into Python objects, a `Dataset`
that draws each negative in a Python loop with a `set` lookup inside `__getitem__`, a `DataLoader`,
and evaluation that scores every item and `argsort`s the whole row for each user. Same model (id
embeddings, cosine scores), same loss (sampled softmax over the positive and n negatives, temperature),
same optimizer and batch size as the twotower run it is compared with.
"""

from __future__ import annotations

import csv
import math
import random
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset


@dataclass
class ReferenceData:
    train: list[tuple[int, int]]
    test: dict[int, set[int]]
    seen: dict[int, set[int]]  # train items per user: the sampler's positives
    known: dict[int, set[int]]  # train + valid items per user: excluded when ranking the test split
    num_users: int
    num_items: int


def read_and_split(path: str, delimiter: str, seed: int = 0, ratios: tuple[float, float] = (0.8, 0.1)) -> ReferenceData:
    """Row by row into Python objects; per-user random split (train / valid / test)."""
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    per_user: dict[int, list[int]] = {}
    with open(path, newline="") as f:
        reader = csv.reader(f, delimiter=delimiter)
        for row in reader:
            if not row or not row[0].strip().isdigit():
                continue  # header
            u = users.setdefault(row[0], len(users))
            i = items.setdefault(row[1], len(items))
            per_user.setdefault(u, []).append(i)
    rng = random.Random(seed)
    train, test, seen, known = [], {}, {}, {}
    for u, its in per_user.items():
        its = list(dict.fromkeys(its))
        rng.shuffle(its)
        n_train = max(1, int(round(len(its) * ratios[0])))
        n_valid = int(round(len(its) * ratios[1]))
        train += [(u, i) for i in its[:n_train]]
        seen[u] = set(its[:n_train])
        known[u] = set(its[: n_train + n_valid])
        held = its[n_train + n_valid:]
        if held:
            test[u] = set(held)
    return ReferenceData(train, test, seen, known, len(users), len(items))


class SampledDataset(Dataset):
    """One training pair per index, its negatives drawn in __getitem__ with a set lookup."""

    def __init__(self, data: ReferenceData, num_negatives: int) -> None:
        self.data, self.num_negatives = data, num_negatives

    def __len__(self) -> int:
        return len(self.data.train)

    def __getitem__(self, index: int) -> tuple[int, int, torch.Tensor]:
        user, item = self.data.train[index]
        positives = self.data.seen[user]
        negatives = []
        while len(negatives) < self.num_negatives:
            candidate = random.randrange(self.data.num_items)
            if candidate not in positives:
                negatives.append(candidate)
        return user, item, torch.tensor(negatives)


class MF(nn.Module):
    def __init__(self, num_users: int, num_items: int, dim: int) -> None:
        super().__init__()
        self.users, self.items = nn.Embedding(num_users, dim), nn.Embedding(num_items, dim)
        nn.init.normal_(self.users.weight, std=0.05)
        nn.init.normal_(self.items.weight, std=0.05)

    def user(self, u: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.users(u), dim=-1)

    def item(self, i: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.items(i), dim=-1)


def train(data: ReferenceData, *, dim: int, epochs: int, batch_size: int, num_negatives: int, lr: float,
          temperature: float, seed: int = 0) -> tuple[MF, float, int]:
    """Returns (model, training seconds, samples seen)."""
    torch.manual_seed(seed)
    random.seed(seed)
    model = MF(data.num_users, data.num_items, dim)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    loader = DataLoader(SampledDataset(data, num_negatives), batch_size=batch_size, shuffle=True)
    start, seen = time.perf_counter(), 0
    for _ in range(epochs):
        for users, items, negatives in loader:
            q = model.user(users)
            pos = (q * model.item(items)).sum(-1, keepdim=True)
            neg = torch.einsum("bd,bnd->bn", q, model.item(negatives))
            logits = torch.cat([pos, neg], dim=1) / temperature
            loss = nn.functional.cross_entropy(logits, torch.zeros(len(users), dtype=torch.long))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            seen += len(users)
    return model, time.perf_counter() - start, seen


@torch.no_grad()
def evaluate(model: MF, data: ReferenceData, k: int = 10, batch_size: int = 256) -> tuple[dict[str, float], float, int]:
    """Full ranking: score every item, mask train + valid items, argsort the whole row. Returns
    (recall@k and ndcg@k, seconds, users evaluated)."""
    start = time.perf_counter()
    users = sorted(data.test)
    items = model.item(torch.arange(data.num_items))
    recall, ndcg = [], []
    for b in range(0, len(users), batch_size):
        batch = users[b : b + batch_size]
        scores = model.user(torch.tensor(batch)) @ items.T
        for row, u in enumerate(batch):
            for i in data.known[u]:
                scores[row, i] = -math.inf
        ranking = torch.argsort(scores, dim=1, descending=True)[:, :k].tolist()
        for row, u in enumerate(batch):
            relevant = data.test[u]
            hits = [1.0 if i in relevant else 0.0 for i in ranking[row]]
            recall.append(sum(hits) / len(relevant))
            dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
            idcg = sum(1.0 / math.log2(r + 2) for r in range(min(len(relevant), k)))
            ndcg.append(dcg / idcg)
    metrics = {f"recall@{k}": float(np.mean(recall)), f"ndcg@{k}": float(np.mean(ndcg))}
    return metrics, time.perf_counter() - start, len(users)
