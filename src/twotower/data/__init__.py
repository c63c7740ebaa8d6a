"""twotower.data: interaction files -> encoded arrays -> train / valid / test splits.

    >>> from twotower.data import build_dataset
    >>> ds = build_dataset("ml-100k/u.data", split="leave_last_out", kcore=5)  # doctest: +SKIP

Modules: `io` (readers), `clean` (row validation), `vocab` (id encoding), `filters` (positives,
dedupe, k-core), `split`, `features` (side features), `synthetic` (generator), `dataset` (the
one-call builder), `stats` (describe), `csr` (every CSR helper).

Names load on first use, so that importing one module (e.g. `twotower.data.csr`) does not
load the file readers (pyarrow) with it.
"""

from twotower._lazy import lazy_exports

_LAZY = {
    "assemble": "twotower.data.split",
    "build_dataset": "twotower.data.dataset",
    "build_features": "twotower.data.features",
    "CSR": "twotower.data.csr",
    "DataConfig": "twotower.settings.data",
    "DataError": "twotower.data.types",
    "dedupe": "twotower.data.filters",
    "describe": "twotower.data.stats",
    "detect_format": "twotower.data.io",
    "encode_ids": "twotower.data.vocab",
    "EncodedInteractions": "twotower.data.dataset",
    "FeatureSource": "twotower.data.features",
    "FeatureSpec": "twotower.data.features",
    "FeatureTable": "twotower.data.types",
    "format_stats": "twotower.data.stats",
    "FORMATS": "twotower.data.io",
    "from_table": "twotower.data.io",
    "generate": "twotower.data.synthetic",
    "generate_with_truth": "twotower.data.synthetic",
    "gini": "twotower.data.stats",
    "infer_source": "twotower.data.features",
    "infer_specs": "twotower.data.features",
    "Interactions": "twotower.data.types",
    "InteractionTable": "twotower.data.io",
    "kcore": "twotower.data.filters",
    "leave_last_out": "twotower.data.split",
    "load_encoded": "twotower.data.dataset",
    "load_features": "twotower.data.features",
    "movielens_item_features": "twotower.data.features",
    "movielens_user_features": "twotower.data.features",
    "ratio_split": "twotower.data.split",
    "read_interactions": "twotower.data.io",
    "ReadReport": "twotower.data.clean",
    "select_positives": "twotower.data.filters",
    "split_summary": "twotower.data.stats",
    "SplitDataset": "twotower.data.types",
    "SyntheticTruth": "twotower.data.synthetic",
    "time_split": "twotower.data.split",
    "UnknownTargets": "twotower.data.types",
    "Vocabulary": "twotower.data.vocab",
    "with_valid_in_train": "twotower.data.split",
    "load": "twotower.data.dataset:build_dataset",  # the contract's other name for `build_dataset`
}

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
    "with_valid_in_train",
]

__getattr__, __dir__ = lazy_exports(globals(), _LAZY)
