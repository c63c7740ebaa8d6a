"""`model.graph_filter`: after training, fit the closed-form graph filter on the training split and
choose its sharpening time (on the filter's own ranking) and the weight of its blend into the towers
on validation (`twotower.model.graph_filter`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from twotower.data import SplitDataset
from twotower.data.csr import csr_pair
from twotower.evaluate import EvalResult, evaluate_targets, ranking_width, split_targets
from twotower.model.graph_filter import GraphFilter
from twotower.model.two_tower import TwoTowerModel
from twotower.retrieval.graph_rank import ALONE, GraphSweep
from twotower.settings import TrainConfig

__all__ = ["GraphBlend", "choose_graph_blend", "two_step_choice"]

log = logging.getLogger("twotower")


@dataclass(frozen=True)
class GraphBlend:
    """The fitted filter (with the chosen weight and sharpening) and what validation said of each
    candidate: the filter alone at each sharpening time, and the blend at each (time, weight)."""

    graph: GraphFilter
    metric: str
    valid_by_choice: dict[tuple[float, float], float]
    seconds: float
    valid: EvalResult | None = None  # the chosen pair's validation and test results, when it was chosen here
    test: EvalResult | None = None
    valid_alone: dict[float, float] = field(default_factory=dict)  # the filter's own ranking, by sharpening time

    def describe(self) -> dict[str, Any]:
        """JSON-ready, for results.json."""
        return {"weight": self.graph.weight, "sharpening": self.graph.sharpening, "rank": self.graph.rank,
                "ideal_weight": self.graph.ideal_weight, "select_metric": self.metric,
                "valid_alone_by_sharpening": [{"sharpening": t, "score": v}
                                              for t, v in sorted(self.valid_alone.items())],
                "valid_by_choice": [{"sharpening": t, "weight": w, "score": v}
                                    for (t, w), v in sorted(self.valid_by_choice.items())],
                "seconds": round(self.seconds, 1)}


def choose_graph_blend(config: TrainConfig, model: TwoTowerModel, dataset: SplitDataset) -> GraphBlend | None:
    """The blend `config.model` asks for, chosen on validation `train.select_metric` in two steps:
    the sharpening time that ranks best with the filter alone, then, at that time, the weight that
    ranks best blended into the towers (weight 0, the towers alone, always competes). Ties go to
    the shorter time and the smaller weight. The time is a property of the filter, and at the small
    weights the blend chooses, the towers dominate its validation score, which then barely tells the
    times apart; the filter's own ranking does (benchmarks/results/quality-gowalla-search.md). A
    single candidate of each is used as given (the refit of `train.refit` passes the pair its
    selection run chose). None when the setting is off, or when there are candidates to choose from
    and no validation split to choose on (logged)."""
    settings = config.model
    if not settings.graph_filter:
        return None
    given = sorted({float(w) for w in settings.graph_filter_weights})
    times = sorted({float(t) for t in settings.graph_filter_sharpening})
    if (len(given) > 1 or len(times) > 1) and len(dataset.valid.users) == 0:
        log.warning("model.graph_filter chooses its weight and sharpening on validation and this data has no "
                    "validation split: the towers rank alone (set one weight in model.graph_filter_weights and one "
                    "time in model.graph_filter_sharpening to blend without a choice)")
        return None
    started = time.perf_counter()
    history = csr_pair(dataset.train_history)
    graph = GraphFilter.fit(*history, dataset.num_items, rank=settings.graph_filter_rank,
                            ideal_weight=settings.graph_filter_ideal_weight, seed=config.train.seed)
    metric = config.train.select_metric
    if len(given) == 1 and len(times) == 1:
        return GraphBlend(graph.with_weight(given[0], times[0]), metric, {}, time.perf_counter() - started)
    weights = sorted({0.0, *given})
    candidates = [(times[0], 0.0), *[(t, w) for t in times for w in weights if w > 0]]
    ks = config.train.ks
    targets = {split: split_targets(dataset, split, config.eval) for split in ("valid", "test")}
    sweep = GraphSweep(model.user_search_vectors(), model.item_search_vectors(), graph, history,
                       ranking_width(ks, dataset.num_items), weights,
                       {split: target.exclude for split, target in targets.items()}, sharpenings=times,
                       alone=("valid",) if len(times) > 1 else ())

    def valid_score(weight: float, sharpening: float) -> EvalResult:
        return evaluate_targets(sweep.ranker(weight, "valid", sharpening), targets["valid"],
                                num_items=dataset.num_items, ks=ks, progress=False, desc="graph filter")

    alone = {t: valid_score(ALONE, t)[metric] for t in times} if len(times) > 1 else {}
    results = {(t, w): valid_score(w, t) for t, w in candidates}
    scores = {pair: result[metric] for pair, result in results.items()}
    chosen_time, weight = two_step_choice(alone, scores)
    best = (chosen_time if weight else times[0], weight)
    test = evaluate_targets(sweep.ranker(weight, "test", chosen_time), targets["test"], num_items=dataset.num_items,
                            ks=ks, progress=False, desc="graph filter")
    return GraphBlend(graph.with_weight(weight, chosen_time), metric, scores, time.perf_counter() - started,
                      results[best], test, alone)


def two_step_choice(alone: dict[float, float], blended: dict[tuple[float, float], float]) -> tuple[float, float]:
    """(sharpening time, weight) from validation scores: the time with the best `alone` score (the
    filter's own ranking; ties: the shorter; no entries: the shortest time of `blended`), then the
    weight with the best `blended` score at that time ((time, weight) keys; weight 0, the towers
    alone, under any time; ties: the smaller weight)."""
    times = sorted({t for t, _ in blended})
    chosen = max(times, key=lambda t: (alone.get(t, 0.0), -t))
    pool = [(t, w) for (t, w) in blended if t == chosen or w == 0]
    return chosen, max(pool, key=lambda pair: (blended[pair], -pair[1]))[1]
