"""From a `DataSource` setting to a `SplitDataset`: the built-in synthetic dataset or the user's files,
plus a fingerprint that ties a saved model to the exact data it was trained and split on."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from twotower.data import SplitDataset, build_dataset, generate
from twotower.settings.data import DataSource


def load_dataset(source: DataSource) -> SplitDataset:
    """Reads (or generates) the interactions and splits them as `source` says.

    Raises:
        FileNotFoundError: a configured file does not exist (named in the message).
        ValueError / twotower.data.DataError: unreadable data, no positives, an empty split...
    """
    for name in ("path", "valid", "test", "user_features", "item_features"):
        value = getattr(source, name)
        if value and not Path(value).exists():
            raise FileNotFoundError(f"data.{name}: file {value} does not exist")
    if source.path:
        interactions = source.path
    else:
        if source.valid or source.test:
            raise ValueError("data.valid / data.test need data.path (the training file)")
        interactions = generate(
            source.synthetic_users,
            source.synthetic_items,
            interactions_per_user=source.synthetic_interactions_per_user,
            seed=source.synthetic_seed,
        )
    return build_dataset(
        interactions,
        valid=source.valid or None,
        test=source.test or None,
        user_features=source.user_features or None,
        item_features=source.item_features or None,
        config=source.options,
    )


def fingerprint(dataset: SplitDataset) -> str:
    """sha256 over the encoded splits and both vocabularies: equal exactly when the data is."""
    digest = hashlib.sha256()
    for part in (dataset.train, dataset.valid, dataset.test):
        for array in (part.users, part.items):
            digest.update(np.ascontiguousarray(array, dtype=np.int64).tobytes())
        digest.update(b"|")
    for vocab in (dataset.user_vocab, dataset.item_vocab):
        digest.update("\x1f".join(map(str, vocab.ids.tolist())).encode())
        digest.update(b"|")
    return digest.hexdigest()
