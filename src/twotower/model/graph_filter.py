"""A closed-form graph filter over the training interactions, blended into the towers' scores.

GF-CF (Shen et al., "How Powerful is Graph Convolution for Recommendation?", CIKM 2021) scores an
item for a user straight from the training graph, without training: with R the binary user x item
matrix, R~ = D_u^-1/2 R D_i^-1/2 its degree-normalised form and P = R~^T R~, a user whose history
is the row r scores

    g0(r) = r P  +  a * r D_i^-1/2 V V^T D_i^1/2

where the first term (the linear filter) sums the normalised co-occurrence paths user - item -
user - item, and the second (the ideal low-pass filter, weight a) projects the history onto the
top right singular vectors V of R~. BSPM (Choi et al., "Blurring-Sharpening Process Models for
Collaborative Filtering", SIGIR 2023) then sharpens the blurred scores by running the reverse of
the heat equation, ds/dt = -s P, for a time T, in one fourth-order Runge-Kutta step, which for
this linear equation is the Taylor polynomial of exp(-T P):

    g(r) = g0(r) (I - T P + T^2 P^2 / 2 - T^3 P^3 / 6 + T^4 P^4 / 24)

(T = 0: GF-CF itself). The sharpening takes back the smoothing that makes the blurred scores
favour popular items. On Gowalla's LightGCN split BSPM alone scores above the published LightGCN;
blended into a trained two-tower (each user's scores standardised, the filter's added with a
weight; T and the weight chosen on validation) it adds what the towers miss
(benchmarks/results/quality-gowalla-search.md).

Every term reads only the user's history, so new users with a history get them too; items without
training rows score 0. The filter is fitted once from the training split in seconds to a minute
(a sparse truncated SVD) and saved next to the model (`save` / `load`, safetensors, no pickle).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from safetensors.numpy import load_file, save_file

from twotower.atomic import atomic_write

__all__ = ["GRAPH_FILTER_FILE", "GraphFilter", "blend", "standardise"]

GRAPH_FILTER_FILE = "graph_filter.safetensors"

# Below this many cells the SVD is taken of the dense matrix (exact, and svds needs rank < min(shape)).
_DENSE_SVD_CELLS = 4_000_000


@dataclass(frozen=True)
class GraphFilter:
    """The filter fitted on one training split, its sharpening, and the weight of its blend into
    the towers.

    Attributes:
        indptr, indices, values: R~ (users x items, CSR, float32 values).
        item_scale: float32 [num_items] D_i^-1/2 (0 for items without training rows).
        spectrum: float32 [rank, num_items] the top right singular vectors of R~ (rows).
        ideal_weight: weight of the low-pass term against the linear one.
        weight: weight of the filter's standardised scores added to the towers' (0: towers alone).
        sharpening: the time T of the sharpening step (0: none, GF-CF's filter).
    """

    indptr: np.ndarray
    indices: np.ndarray
    values: np.ndarray
    item_scale: np.ndarray
    spectrum: np.ndarray
    ideal_weight: float = 0.2
    weight: float = 0.0
    sharpening: float = 0.0

    @property
    def num_items(self) -> int:
        return len(self.item_scale)

    @property
    def rank(self) -> int:
        return self.spectrum.shape[0]

    @classmethod
    def fit(cls, indptr: np.ndarray, indices: np.ndarray, num_items: int, *, rank: int = 256,
            ideal_weight: float = 0.2, seed: int = 0) -> GraphFilter:
        """The filter of a training split given as CSR over users (`indptr`, `indices`: item codes
        in [0, num_items); repeated entries count once). `rank` is capped below the matrix's
        smaller side; 0 leaves the low-pass term out."""
        from scipy.sparse.linalg import svds

        if rank < 0:
            raise ValueError(f"graph filter rank must be >= 0; got {rank}")
        if not np.isfinite(ideal_weight) or ideal_weight < 0:
            raise ValueError(f"graph filter ideal_weight must be a finite float >= 0; got {ideal_weight}")
        matrix = _binary(np.asarray(indptr, dtype=np.int64), np.asarray(indices, dtype=np.int64), num_items)
        user_degree = np.asarray(matrix.sum(axis=1)).ravel()
        item_degree = np.asarray(matrix.sum(axis=0)).ravel()
        user_scale, item_scale = _inverse_sqrt(user_degree), _inverse_sqrt(item_degree)
        normalised = (matrix.multiply(user_scale[:, None]).multiply(item_scale[None, :])).tocsr().astype(np.float64)
        rank = min(rank, min(normalised.shape) - 1)
        if rank <= 0 or normalised.nnz == 0:
            spectrum = np.zeros((0, num_items), dtype=np.float32)
        elif normalised.shape[0] * normalised.shape[1] <= _DENSE_SVD_CELLS:
            spectrum = np.linalg.svd(normalised.toarray(), full_matrices=False)[2][:rank]
        else:
            _, singular, vt = svds(normalised, k=rank, random_state=np.random.default_rng(seed))
            spectrum = vt[np.argsort(-singular)]
        normalised.sort_indices()
        return cls(normalised.indptr.astype(np.int64), normalised.indices.astype(np.int64),
                   normalised.data.astype(np.float32), item_scale.astype(np.float32),
                   np.ascontiguousarray(spectrum, dtype=np.float32), float(ideal_weight))

    def scores(self, indptr: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """float32 [B, num_items]: g(r) for B histories given as CSR (item codes; repeats count once),
        sharpened for `self.sharpening`."""
        return self.sharpened_scores(indptr, indices, [self.sharpening])[0]

    def sharpened_scores(self, indptr: np.ndarray, indices: np.ndarray, times: Sequence[float]) -> list[np.ndarray]:
        """g(r) for each sharpening time of `times` (float32 [B, num_items] each), from one set of
        propagations: the blurred scores and their four products with P are shared by every time."""
        times = [float(t) for t in times]
        if any(not np.isfinite(t) or t < 0 for t in times):
            raise ValueError(f"sharpening times must be finite floats >= 0; got {times}")
        rows = _binary(np.asarray(indptr, dtype=np.int64), np.asarray(indices, dtype=np.int64), self.num_items)
        # Everything in items x B (one column per history) so the sparse products need no transposes;
        # one transpose per time at the end.
        normalised = self._normalised()
        propagate = _Propagation(normalised)
        blurred = propagate(rows.T.tocsr())
        if self.rank and self.ideal_weight:
            projected = _dense(self.spectrum @ rows.multiply(self.item_scale[None, :]).T.tocsr())  # [rank, B]
            ideal = (self.spectrum.T @ projected) * _sqrt_or_zero(self.item_scale)[:, None]
            blurred += np.float32(self.ideal_weight) * np.asarray(ideal, dtype=np.float32)
        powers = [blurred]
        for _ in range(4 if any(times) else 0):
            powers.append(propagate(powers[-1]))
        return [_transposed(_polynomial(powers, time)) for time in times]

    def _normalised(self):  # -> scipy.sparse.csr_matrix
        """R~ as a SciPy CSR matrix (built once per scoring call, shared by its five products)."""
        import scipy.sparse as sp

        return sp.csr_matrix((self.values, self.indices, self.indptr), shape=(len(self.indptr) - 1, self.num_items))

    def with_weight(self, weight: float, sharpening: float | None = None) -> GraphFilter:
        """The same filter with another blend weight (>= 0) and, when given, sharpening time (>= 0)."""
        sharpening = self.sharpening if sharpening is None else sharpening
        for name, value in (("weight", weight), ("sharpening", sharpening)):
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"graph filter {name} must be a finite float >= 0; got {value}")
        return GraphFilter(self.indptr, self.indices, self.values, self.item_scale, self.spectrum,
                           self.ideal_weight, float(weight), float(sharpening))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Writes the filter to `path` (safetensors; the weights in its metadata), atomically."""
        arrays = {"indptr": self.indptr, "indices": self.indices, "values": self.values,
                  "item_scale": self.item_scale, "spectrum": self.spectrum}
        metadata = {"ideal_weight": repr(self.ideal_weight), "weight": repr(self.weight),
                    "sharpening": repr(self.sharpening)}
        atomic_write(Path(path), lambda tmp: save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()},
                                                        str(tmp), metadata=metadata))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> GraphFilter:
        """Reads a filter written by `save`; a damaged or inconsistent file is refused, named."""
        from safetensors import safe_open

        try:
            arrays = load_file(str(path))
            with safe_open(str(path), framework="numpy") as handle:
                metadata = handle.metadata() or {}
            ideal_weight, weight = float(metadata["ideal_weight"]), float(metadata["weight"])
            sharpening = float(metadata.get("sharpening", "0.0"))  # files saved before sharpening: none
        except Exception as err:  # safetensors' error for a truncated file; a missing or bad metadata entry
            raise ValueError(f"{path} is not a readable graph filter file ({type(err).__name__}: {err})") from None
        missing = {"indptr", "indices", "values", "item_scale", "spectrum"} - set(arrays)
        if missing:
            raise ValueError(f"{path} is not a graph filter file: it lacks {sorted(missing)}")
        graph = cls(arrays["indptr"], arrays["indices"], arrays["values"], arrays["item_scale"], arrays["spectrum"],
                    ideal_weight, weight, sharpening)
        problem = graph._problem()
        if problem is not None:
            raise ValueError(f"{path}: {problem}")
        return graph

    def _problem(self) -> str | None:
        """What makes the arrays inconsistent, or None."""
        if self.indptr.ndim != 1 or len(self.indptr) < 1 or self.indptr[0] != 0:
            return "indptr must be a 1-d array starting at 0"
        if np.any(np.diff(self.indptr) < 0) or self.indptr[-1] != len(self.indices):
            return "indptr does not delimit indices"
        if len(self.indices) != len(self.values):
            return f"indices ({len(self.indices)}) and values ({len(self.values)}) differ in length"
        if len(self.indices) and (self.indices.min() < 0 or self.indices.max() >= self.num_items):
            return f"item codes outside [0, {self.num_items})"
        if self.spectrum.ndim != 2 or self.spectrum.shape[1] != self.num_items:
            return f"spectrum has shape {self.spectrum.shape}; expected (rank, {self.num_items})"
        if not (np.isfinite(self.ideal_weight) and np.isfinite(self.weight)) or self.weight < 0:
            return f"weights must be finite and the blend weight >= 0 (ideal {self.ideal_weight}, blend {self.weight})"
        if not np.isfinite(self.sharpening) or self.sharpening < 0:
            return f"the sharpening time must be a finite float >= 0; got {self.sharpening}"
        return None


def standardise(scores: np.ndarray) -> np.ndarray:
    """Each row minus its mean, over its standard deviation (a constant row becomes zeros), so two
    scorers' rows can be added on one scale whatever their units."""
    import torch

    matrix = torch.from_numpy(np.asarray(scores, dtype=np.float32))  # on torch's threads, no full-size temporaries
    spread, mean = torch.std_mean(matrix, dim=1, correction=0, keepdim=True)
    constant = spread <= 0
    out = matrix - mean
    out.div_(torch.where(constant, torch.ones_like(spread), spread))
    out.masked_fill_(constant, 0.0)
    return out.numpy()


def blend(tower_scores: np.ndarray, graph_scores: np.ndarray, weight: float) -> np.ndarray:
    """standardise(towers) + weight * standardise(graph), rows = users, over the whole catalogue
    (torch's add with alpha: the same arithmetic as the rankers of `twotower.retrieval.graph_rank`,
    so a served blend and an evaluated one order near-ties alike)."""
    import torch

    out = torch.from_numpy(standardise(tower_scores))
    if weight:
        out.add_(torch.from_numpy(standardise(graph_scores)), alpha=weight)
    return out.numpy()


def _binary(indptr: np.ndarray, indices: np.ndarray, num_items: int):  # -> scipy.sparse.csr_matrix
    import scipy.sparse as sp

    if len(indices) and (indices.min() < 0 or indices.max() >= num_items):
        raise ValueError(f"history item codes must be in [0, {num_items})")
    matrix = sp.csr_matrix((np.ones(len(indices), dtype=np.float32), indices, indptr),
                           shape=(len(indptr) - 1, num_items))
    matrix.sum_duplicates()
    matrix.data[:] = 1.0
    return matrix


def _inverse_sqrt(degree: np.ndarray) -> np.ndarray:
    out = np.zeros(len(degree), dtype=np.float64)
    np.divide(1.0, np.sqrt(degree), out=out, where=degree > 0)
    return out


def _sqrt_or_zero(inverse_sqrt: np.ndarray) -> np.ndarray:
    """D^1/2 from D^-1/2 (0 stays 0)."""
    out = np.zeros(len(inverse_sqrt), dtype=np.float32)
    np.divide(1.0, inverse_sqrt, out=out, where=inverse_sqrt > 0)
    return out


class _Propagation:
    """columns -> P @ columns = R~^T (R~ columns) (float32 [num_items, B]; P is symmetric). A sparse
    `columns` (a batch of histories) goes through SciPy's sparse x sparse product; dense ones through
    torch's CSR x dense products, which run on torch's intra-op threads where SciPy's run on one."""

    def __init__(self, normalised) -> None:  # scipy CSR R~
        self._normalised = normalised
        self._forward, self._backward = _torch_csr(normalised), _torch_csr(normalised.T.tocsr())

    def __call__(self, columns) -> np.ndarray:
        import torch

        if hasattr(columns, "toarray"):  # R~ times a sparse batch is sparse: SciPy's sparse x sparse product
            paths = torch.from_numpy(np.asarray(_dense(self._normalised @ columns), dtype=np.float32))
        else:
            paths = self._forward @ torch.from_numpy(np.ascontiguousarray(columns, dtype=np.float32))
        return (self._backward @ paths).numpy()  # [num_items, B]


def _torch_csr(matrix):  # scipy CSR -> torch sparse CSR (float32)
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            torch.from_numpy(matrix.indptr.astype(np.int64)), torch.from_numpy(matrix.indices.astype(np.int64)),
            torch.from_numpy(matrix.data.astype(np.float32, copy=False)), size=matrix.shape, check_invariants=False)


def _polynomial(powers: list[np.ndarray], time: float):  # -> torch.Tensor [num_items, B]
    """The RK4 step's sum g0 (I - T P + T^2 P^2 / 2 - T^3 P^3 / 6 + T^4 P^4 / 24) from powers[k] = g0 P^k,
    accumulated in place on torch's threads (no temporaries of the full matrix)."""
    import torch

    if not time:
        return torch.from_numpy(powers[0])
    coefficients = [-time, time ** 2 / 2, -(time ** 3) / 6, time ** 4 / 24]
    total = torch.from_numpy(powers[0]).clone()
    for coefficient, power in zip(coefficients, powers[1:], strict=True):
        total.add_(torch.from_numpy(power), alpha=coefficient)
    return total


def _transposed(matrix) -> np.ndarray:  # torch.Tensor
    """A C-contiguous NumPy copy of matrix.T (torch's blocked, threaded copy: a plain NumPy transpose
    of a tall float32 matrix is cache-bound)."""
    return matrix.T.contiguous().numpy()


def _dense(matrix) -> np.ndarray:
    return matrix.toarray() if hasattr(matrix, "toarray") else np.asarray(matrix)
