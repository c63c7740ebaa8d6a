"""What one batched call does (`MicroBatcher`'s runner): the jobs of one key become one tower pass and
one search, and the answers are split back per job.

Keys: ("users", served, k, exclude_seen) with payloads = lists of user codes (the tower pass is
batched too; a model with a graph filter ranks them by its blend), ("vectors", served, k) with
payloads = (queries [b, D'], exclusion CSR or None) from cold-start users or item-to-item queries,
encoded by their endpoint, or ("histories", served, k) with payloads = (queries, exclusion CSR or
None, history CSR): cold-start users with a history, of a model with a graph filter, ranked by its
blend, the filter reading that history.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

import numpy as np

from twotower.retrieval.searcher import CSRPair
from twotower.serve.catalogue import Answer


def run_batch(key: Hashable, payloads: list[Any]) -> list[list[Answer]]:
    """One result per payload: the answers of its queries, in order."""
    kind, served, k = key[0], key[1], key[2]
    if kind == "users":
        codes = np.array([code for payload in payloads for code in payload], dtype=np.int64)
        recommender = served.recommender
        queries, exclude = recommender.code_queries(codes, exclude_seen=key[3])
        sizes = [len(payload) for payload in payloads]
        graph = recommender.trained.graph
        if graph is not None:  # known users of a model with a graph filter: ranked by the blend
            answers = served.catalogue.blended_answer(queries, graph, recommender.histories(codes), k, exclude)
            return _split(answers, sizes)
    else:
        queries = np.concatenate([payload[0] for payload in payloads])
        sizes = [len(payload[0]) for payload in payloads]
        exclude = concat_csr([payload[1] for payload in payloads], sizes)
        if kind == "histories":
            histories = concat_csr([payload[2] for payload in payloads], sizes)
            graph = served.recommender.trained.graph
            return _split(served.catalogue.blended_answer(queries, graph, histories, k, exclude), sizes)
    return _split(served.catalogue.answer(queries, k, exclude), sizes)


def _split(answers: list[Answer], sizes: list[int]) -> list[list[Answer]]:
    """The answers of one batched call, back per payload."""
    bounds = np.cumsum([0, *sizes]).tolist()
    return [answers[start:end] for start, end in zip(bounds[:-1], bounds[1:], strict=True)]


def concat_csr(parts: list[CSRPair | None], rows: list[int]) -> CSRPair | None:
    """Per-query CSRs stacked in order (a None part: `rows` queries with nothing to skip); None if all are."""
    if all(part is None for part in parts):
        return None
    pointers, indices, offset = [np.zeros(1, dtype=np.int64)], [], 0
    for part, count in zip(parts, rows, strict=True):
        indptr, values = (np.zeros(count + 1, np.int64), np.zeros(0, np.int64)) if part is None else part
        pointers.append(np.asarray(indptr[1:], dtype=np.int64) + offset)
        indices.append(np.asarray(values, dtype=np.int64))
        offset += int(indptr[-1])
    return np.concatenate(pointers), np.concatenate(indices)
