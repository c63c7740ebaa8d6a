"""The served model and its hot swap: one `Served` bundle (recommender, live catalogue, version) is
current at a time; a reload builds the next bundle beside it and replaces it in one assignment.

A request reads `holder.current` once and uses that bundle to the end, so requests in flight finish
on the version they started on, and nothing ever mixes one model's user vectors with another's
item index. Item updates apply to the catalogue of the version they reach; a reload starts from the
new model directory's own items.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from twotower.model.model_dir import load_model_dir
from twotower.retrieval.recommend import Recommender
from twotower.serve.catalogue import LiveCatalogue
from twotower.serve.ids import IdLookup

log = logging.getLogger("twotower")


@dataclass(frozen=True)
class Served:
    """One servable version: the model's recommender, its live catalogue, the version name
    ("generation:first 12 hex digits of the weights' SHA-256", carried by every response) and its
    user id lookup."""

    recommender: Recommender
    catalogue: LiveCatalogue
    version: str
    user_ids: IdLookup

    @property
    def path(self) -> Path:
        return self.recommender.path


def load_served(model_dir: str | os.PathLike[str], *, ann: bool, generation: int,
                search_threads: int | None = None) -> Served:
    """Loads a model directory and builds its catalogue (the HNSW index saved in it with `ann`;
    `search_threads` per search call).

    Raises:
        FileNotFoundError, ValueError: as `Recommender.load` (a missing or inconsistent directory,
            no saved index with `ann`).
    """
    recommender = Recommender(load_model_dir(model_dir))
    graph = recommender.trained.graph
    if graph is not None:
        log.info("%s carries a graph filter (model.graph_filter, weight %g, sharpening %g): known users, and new "
                 "users given with a history, are ranked by its blend with the towers; new users without a history "
                 "and similar items by the towers alone", model_dir, graph.weight, graph.sharpening)
    catalogue = LiveCatalogue(recommender, ann=ann, num_threads=search_threads)
    digest = str(recommender.trained.config.get("weights_sha256") or "unhashed")[:12]
    return Served(recommender, catalogue, f"{generation}:{digest}", IdLookup(recommender.trained.user_vocab))


class ModelHolder:
    """The current `Served` bundle and its reloads (one at a time).

    Attributes:
        current: the bundle new requests use.
        ann: whether bundles search their saved HNSW index.
        reload_state: "idle", "loading" or "failed"; `reload_error` says why the last one failed.
    """

    def __init__(self, served: Served, *, ann: bool, search_threads: int | None = None) -> None:
        self.current = served
        self.ann, self.search_threads = ann, search_threads
        self.reload_state = "idle"
        self.reload_error: str | None = None
        self._generation = int(served.version.split(":")[0])
        self._lock = threading.Lock()

    def begin_reload(self) -> bool:
        """Claims the single reload slot; False while another reload is loading."""
        if not self._lock.acquire(blocking=False):
            return False
        self.reload_state, self.reload_error = "loading", None
        return True

    def finish_reload(self, model_dir: str | os.PathLike[str]) -> Served:
        """Loads `model_dir` (after `begin_reload`) and makes it current in one step.

        Raises:
            whatever `load_served` raises; the current bundle then stays.
        """
        try:
            served = load_served(model_dir, ann=self.ann, generation=self._generation + 1,
                                 search_threads=self.search_threads)
            self._generation += 1
            self.current = served  # the swap: one reference assignment
            self.reload_state = "idle"
            return served
        except Exception as err:
            self.reload_state, self.reload_error = "failed", str(err)
            raise
        finally:
            self._lock.release()
