"""twotower.data: interaction files -> encoded arrays -> train / valid / test splits.

    >>> from twotower.data import build_dataset
    >>> ds = build_dataset("ml-100k/u.data", split="leave_last_out", kcore=5)  # doctest: +SKIP

Modules: `io` (readers), `clean` (row validation), `vocab` (id encoding), `filters` (positives,
dedupe, k-core), `split`, `features` (side features), `synthetic` (generator), `dataset` (the
one-call builder), `stats` (describe).
"""

from twotower.data.clean import ReadReport
from twotower.data.dataset import DataConfig, EncodedInteractions, build_dataset, load_encoded
from twotower.data.features import (
    FeatureSource,
    FeatureSpec,
    build_features,
    infer_source,
    infer_specs,
    load_features,
    movielens_item_features,
    movielens_user_features,
)
from twotower.data.filters import dedupe, kcore, select_positives
from twotower.data.io import FORMATS, InteractionTable, detect_format, from_table, read_interactions
from twotower.data.split import assemble, leave_last_out, ratio_split, time_split
from twotower.data.stats import describe, format_stats, gini, split_summary
from twotower.data.synthetic import SyntheticTruth, generate, generate_with_truth
from twotower.data.types import CSR, DataError, FeatureTable, Interactions, SplitDataset, UnknownTargets
from twotower.data.vocab import Vocabulary, encode_ids

load = build_dataset  # the contract's other name for the one-call builder

__all__ = [
    "CSR",
    "FORMATS",
    "DataConfig",
    "DataError",
    "EncodedInteractions",
    "FeatureSource",
    "FeatureSpec",
    "FeatureTable",
    "InteractionTable",
    "Interactions",
    "ReadReport",
    "SplitDataset",
    "SyntheticTruth",
    "UnknownTargets",
    "Vocabulary",
    "assemble",
    "build_dataset",
    "build_features",
    "dedupe",
    "describe",
    "detect_format",
    "encode_ids",
    "format_stats",
    "from_table",
    "generate",
    "generate_with_truth",
    "gini",
    "infer_source",
    "infer_specs",
    "kcore",
    "leave_last_out",
    "load",
    "load_encoded",
    "load_features",
    "movielens_item_features",
    "movielens_user_features",
    "ratio_split",
    "read_interactions",
    "select_positives",
    "split_summary",
    "time_split",
]
