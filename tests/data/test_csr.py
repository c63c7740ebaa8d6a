"""twotower.data.csr, the one home of the CSR helpers, against plain Python lists of rows; and the
light import it promises (NumPy only: the data package loads its readers on first use)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

import twotower.data
from twotower.data.csr import (
    CSR,
    csr_pair,
    group_by_user,
    indptr_from_counts,
    row_ids,
    sorted_unique,
    take_rows,
    transpose,
)


def random_rows(num_rows: int, num_cols: int, seed: int) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [sorted(rng.choice(num_cols, size=rng.integers(0, num_cols // 2), replace=False).tolist())
            for _ in range(num_rows)]


def as_csr(rows: list[list[int]]) -> CSR:
    indptr = indptr_from_counts(np.array([len(r) for r in rows], dtype=np.int64))
    return CSR(indptr, np.array([c for r in rows for c in r], dtype=np.int32))


def test_from_pairs_and_group_by_user_give_each_rows_sorted_unique_columns():
    rows = random_rows(30, 12, seed=1)
    users = np.array([u for u, r in enumerate(rows) for _ in r] * 2)  # every pair twice
    items = np.array([c for r in rows for c in r] * 2)
    order = np.random.default_rng(2).permutation(len(users))
    built = CSR.from_pairs(users[order], items[order], len(rows))
    indptr, indices = group_by_user(users[order], items[order], len(rows))
    for r, expected in enumerate(rows):
        assert built.row(r).tolist() == expected
        assert indices[indptr[r]:indptr[r + 1]].tolist() == expected


def test_take_rows_row_ids_and_csr_pair():
    rows = random_rows(20, 9, seed=3)
    csr = as_csr(rows)
    pick = np.array([5, 0, 5, 19, 7])
    indptr, indices = take_rows(csr_pair(csr), pick)
    assert [indices[indptr[i]:indptr[i + 1]].tolist() for i in range(len(pick))] == [rows[p] for p in pick]
    assert row_ids(csr.indptr).tolist() == [r for r, row in enumerate(rows) for _ in row]
    assert csr_pair((csr.indptr, csr.indices))[1].dtype == np.int64
    with pytest.raises(TypeError, match="expected a CSR"):
        csr_pair(np.zeros(3))


@pytest.mark.parametrize("length", [0, 3])
def test_transpose_lists_each_columns_rows(length: int):
    rows = random_rows(25, 10, seed=4)
    indptr, users = transpose(*csr_pair(as_csr(rows)), 10, length)
    for c in range(10):
        got = users[indptr[c]:indptr[c + 1]].tolist()
        assert sorted(got) == [r for r, row in enumerate(rows) if c in row]
        if length == 0:
            assert got == sorted(got)
    with pytest.raises(ValueError, match=r"item codes must be in \[0, 5\)"):
        transpose(*csr_pair(as_csr(rows)), 5)


def test_sorted_unique():
    values = np.array([5, 1, 5, 3, 1])
    assert sorted_unique(values).tolist() == [1, 3, 5]
    increasing = np.array([1, 2, 9])
    assert sorted_unique(increasing) is increasing


def test_the_data_package_names_load_on_first_use():
    for name in twotower.data.__all__:
        assert getattr(twotower.data, name) is not None, name
    code = ("import json, sys, twotower.data.csr, twotower.metrics; "
            "print(json.dumps(sorted(m for m in ('torch', 'numba', 'pyarrow') if m in sys.modules)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
