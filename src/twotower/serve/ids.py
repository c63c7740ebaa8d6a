"""External id -> trained code, for the ids of every request: `Vocabulary.encode` hashes the whole
vocabulary on each call, which for millions of ids costs more than the search it serves, so the
service builds this once per model: integer ids are found by binary search in a sorted copy, text
ids in a dict. Ids come as JSON gives them; "17" means 17 for a model with integer ids, as in
`Recommender`."""

from __future__ import annotations

from typing import Any

import numpy as np

from twotower.data.vocab import Vocabulary


class IdLookup:
    """Codes of external ids in one vocabulary (-1: not in it).

    Example:
        >>> lookup = IdLookup(Vocabulary(np.array([50, 7, 11])))
        >>> lookup.codes([7, "11", 8, "x", True])
        [1, 2, -1, -1, -1]
    """

    def __init__(self, vocab: Vocabulary) -> None:
        self.integer = vocab.is_integer
        if self.integer:
            self._order = np.argsort(vocab.ids, kind="stable")
            self._sorted = np.asarray(vocab.ids, dtype=np.int64)[self._order]
        else:
            self._codes = {value: code for code, value in enumerate(vocab.ids.tolist())}

    def key(self, value: Any) -> Any:
        """The id as this vocabulary keys it: an int for integer ids (text such as "17" too), text
        otherwise; None when it cannot be one of its ids (a bool, a float, text that is no number)."""
        if isinstance(value, bool):
            return None
        if not self.integer:
            return value if isinstance(value, str) else None
        if isinstance(value, int):
            return value
        try:
            return int(value) if isinstance(value, str) else None
        except ValueError:
            return None

    def codes(self, values: list[Any]) -> list[int]:
        """Codes of ids as given, -1 where not in the vocabulary."""
        return self.codes_of_keys([self.key(value) for value in values])

    def codes_of_keys(self, keys: list[Any]) -> list[int]:
        """Codes of keys as `key` makes them (None: no id), -1 where not in the vocabulary."""
        if not self.integer:
            return [self._codes.get(key, -1) if key is not None else -1 for key in keys]
        if not len(self._sorted):
            return [-1] * len(keys)
        fits = np.array([key is not None and -(2**63) <= key < 2**63 for key in keys], dtype=bool)
        values = np.array([key if ok else 0 for key, ok in zip(keys, fits.tolist(), strict=True)], dtype=np.int64)
        where = np.minimum(np.searchsorted(self._sorted, values), len(self._sorted) - 1)
        found = fits & (self._sorted[where] == values)
        return np.where(found, self._order[where], -1).tolist()
