"""Selection strategies: rank class tuples and keep the top `count`; each tuple becomes one new class.

A strategy is one small function registered by name that returns (tuples, scores) in rank order:

    @register("my-strategy")
    def my_strategy(spaces: Spaces, opt: Options) -> tuple[np.ndarray, np.ndarray]: ...

Distances are cosine distances, 1 - cos, between the recognizer's class centres ("embedding") or the
generator's class-embedding vectors ("condition"). A tuple's distance is the sum of its pairwise distances
(for a pair, the distance itself), so `embedding-distant` with `tuple_size=3` and `triplet-sum-max` agree.

Distances are computed a block of rows at a time from the unit vectors (`Distances`), never as an n x n
matrix: at 10,000 classes that matrix alone would be 800 MB.
Pairs: exact top-N in one pass over row blocks, O(n^2) time, O(block x n + N) memory.
Triplets, up to EXACT_TRIPLETS classes: exact top-N over all C(n, 3) without materialising them: one block per
first class i holds the (n-i-1)^2 sums for j, k > i; each block's best N candidates are merged into a running
top-N with `argpartition` (O(n^3 / 3) vectorised additions: n = 1000 classes, a few seconds).
Triplets above that: a threshold search over the best pairs (`_triplets_from_pairs`): each of the P best
pairs is extended by its best third classes (O(P n)); the result is certified exact when the next pair's
distance cannot reach the N-th triplet (a triplet's sum is at most 3x its best pair), otherwise P grows
up to a budget, beyond which the best found is returned and the log says it is not certified.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from scoremix_ray.foundations.errors import ScoreMixError

log = logging.getLogger("scoremix_ray")


class Distances:
    """Cosine distances 1 - cos between the rows of x, clipped to [0, 2], a block of rows at a time."""

    def __init__(self, x: np.ndarray):
        x = np.asarray(x, np.float64)
        self.u = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    def __len__(self) -> int:
        return len(self.u)

    def rows(self, idx) -> np.ndarray:
        """Distances from the classes `idx` (a slice or index array) to every class: (len(idx), n)."""
        return np.clip(1.0 - self.u[idx] @ self.u.T, 0.0, 2.0)

    def pairs(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.clip(1.0 - np.einsum("nd,nd->n", self.u[a], self.u[b]), 0.0, 2.0)

    def block_rows(self) -> int:
        return max(1, 2**22 // max(1, len(self)))  # ~32 MB of float64 per block


@dataclass
class Spaces:
    """The two class spaces, rows in the same class order (training class ids 0..n-1)."""

    embedding: np.ndarray | None = None  # recognizer class centres (n, d)
    condition: np.ndarray | None = None  # generator class-embedding vectors (n, d')

    def distances(self, which: str) -> Distances:
        x = getattr(self, which)
        if x is None:
            raise ScoreMixError(f"this strategy needs the {which} space, which was not given")
        return Distances(x)

    @property
    def num_classes(self) -> int:
        return len(self.embedding if self.embedding is not None else self.condition)


@dataclass
class Options:
    count: int
    tuple_size: int = 2
    max_uses: int | None = None  # how often one class may appear across the selected tuples
    seed: int = 0


Strategy = Callable[[Spaces, Options], tuple[np.ndarray, np.ndarray]]
STRATEGIES: dict[str, Strategy] = {}


def register(name: str) -> Callable[[Strategy], Strategy]:
    def deco(fn: Strategy) -> Strategy:
        STRATEGIES[name] = fn
        return fn

    return deco


def tuple_distance(dist: Distances, tuples: np.ndarray) -> np.ndarray:
    """Sum of pairwise distances within each tuple."""
    return sum(dist.pairs(tuples[:, a], tuples[:, b]) for a, b in itertools.combinations(range(tuples.shape[1]), 2))


EXACT_TRIPLETS = 1000  # classes up to which triplets are searched exhaustively
PAIR_BUDGET = 1 << 15  # pairs the threshold search may extend before it stops short of a certificate


def _keep_best(cand: np.ndarray, key: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    if len(key) > m:
        part = np.argpartition(key, m - 1)[:m]
        return cand[part], key[part]
    return cand, key


def _sorted(cand: np.ndarray, key: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.lexsort([*cand.T[::-1], key])  # best first; ties broken by the tuple itself (deterministic)
    return cand[order].astype(np.int64), key[order]


def _top_pairs(dist: Distances, m: int, sign: float) -> tuple[np.ndarray, np.ndarray]:
    """The m pairs (i < j) of smallest sign * d, best first, one block of rows at a time."""
    n, step = len(dist), dist.block_rows()
    cand, ckey = np.zeros((0, 2), np.int64), np.zeros(0)
    for lo in range(0, n - 1, step):
        hi = min(n, lo + step)
        block = sign * dist.rows(slice(lo, hi))
        r, j = np.nonzero(np.arange(n)[None, :] > np.arange(lo, hi)[:, None])  # j > i only
        pairs, key = _keep_best(np.stack([lo + r, j], 1), block[r, j], m)
        cand, ckey = _keep_best(np.concatenate([cand, pairs]), np.concatenate([ckey, key]), m)
    return _sorted(cand, ckey)


def _triplets_exact(dist: Distances, m: int, sign: float) -> tuple[np.ndarray, np.ndarray]:
    d = dist.rows(slice(None))
    n = len(d)
    cand, ckey = np.zeros((0, 3), np.int64), np.zeros(0)
    for i in range(n - 2):
        rest = np.arange(i + 1, n)
        block = d[i, rest][:, None] + d[i, rest][None, :] + d[np.ix_(rest, rest)]
        jj, kk = np.triu_indices(len(rest), 1)
        trip, key = _keep_best(np.stack([np.full(len(jj), i), rest[jj], rest[kk]], 1), sign * block[jj, kk], m)
        cand, ckey = _keep_best(np.concatenate([cand, trip]), np.concatenate([ckey, key]), m)
    return _sorted(cand, ckey)


def _triplets_from_pairs(dist: Distances, m: int, sign: float, budget: int = PAIR_BUDGET):
    """Threshold search: with key = sign * d, a triplet's key sum is at least 3x the smallest key among its three
    pairs, so once the (P+1)-th best pair has key > T / 3 (T: the m-th best triplet found among extensions
    of the P best pairs) no unseen triplet can enter the top m: the answer is exact. Returns (tuples, keys,
    certified)."""
    n = len(dist)
    total_pairs = n * (n - 1) // 2
    pairs, pkeys = _top_pairs(dist, min(total_pairs, budget + 1), sign)  # once: the best pairs, in order
    p, done = min(len(pairs), max(256, m)), 0
    cand, ckey = np.zeros((0, 3), np.int64), np.zeros(0)
    while True:
        for lo in range(done, p, 256):
            ij, pk = pairs[lo : min(p, lo + 256)], pkeys[lo : min(p, lo + 256)]
            third = sign * (dist.rows(ij[:, 0]) + dist.rows(ij[:, 1])) + pk[:, None]  # key sum for every k
            rows = np.arange(len(ij))
            third[rows, ij[:, 0]] = third[rows, ij[:, 1]] = np.inf
            kk = np.argpartition(third, m - 1, axis=1)[:, :m] if m < n else np.argsort(third, 1)
            trip = np.sort(np.concatenate([np.repeat(ij, kk.shape[1], 0), kk.reshape(-1, 1)], 1), 1)
            key = np.take_along_axis(third, kk, 1).reshape(-1)
            ok = np.isfinite(key)
            trip, first = np.unique(np.concatenate([cand, trip[ok]]), axis=0, return_index=True)
            cand, ckey = _keep_best(trip, np.concatenate([ckey, key[ok]])[first], m)
        done = p
        t = np.sort(ckey)[m - 1] if len(ckey) >= m else np.inf
        if done >= total_pairs or (done < len(pairs) and pkeys[done] > t / 3):
            return (*_sorted(cand, ckey), True)
        if done >= min(budget, len(pairs)):
            return (*_sorted(cand, ckey), False)
        p = min(4 * p, budget, len(pairs))


def top_tuples(dist: Distances, k: int, m: int, largest: bool, exact_limit: int = EXACT_TRIPLETS):
    """Best `m` k-tuples (k = 2 or 3, i < j < k) by summed distance, sorted best first."""
    sign = -1.0 if largest else 1.0  # minimise sign * score
    if k == 2:
        cand, key = _top_pairs(dist, m, sign)
    elif k == 3 and len(dist) <= exact_limit:
        cand, key = _triplets_exact(dist, m, sign)
    elif k == 3:
        cand, key, certified = _triplets_from_pairs(dist, m, sign)
        if not certified:
            log.warning(
                "select: %d classes, triplet top-%d from the best %d pairs, not certified exact",
                len(dist),
                m,
                PAIR_BUDGET,
            )
    else:
        raise ScoreMixError(f"ranked strategies support tuples of 2 or 3 classes, not selection.tuple_size={k}")
    return cand, sign * key


def greedy_limit(tuples: np.ndarray, count: int, max_uses: int | None) -> np.ndarray:
    """Indices of the first `count` tuples, in rank order, that keep every class within `max_uses`."""
    if max_uses is None:
        return np.arange(min(count, len(tuples)))
    uses: dict[int, int] = {}
    keep = []
    for r, t in enumerate(tuples):
        if all(uses.get(int(c), 0) < max_uses for c in t):
            keep.append(r)
            for c in t:
                uses[int(c)] = uses.get(int(c), 0) + 1
            if len(keep) == count:
                break
    return np.asarray(keep, np.int64)


def ranked(dist: Distances, opt: Options, largest: bool, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top `opt.count` tuples by summed distance; with `max_uses`, greedily down the exact ranking (the
    candidate list doubles until the greedy pass is complete, so the result equals a full-ranking pass)."""
    k = k or opt.tuple_size
    total = math.comb(len(dist), k)
    m = min(total, opt.count if opt.max_uses is None else 4 * opt.count)
    while True:
        cand, scores = top_tuples(dist, k, m, largest)
        keep = greedy_limit(cand, opt.count, opt.max_uses)
        if len(keep) == opt.count or m == total:
            return cand[keep], scores[keep]
        m = min(total, 2 * m)


@register("random")
def random_tuples(spaces: Spaces, opt: Options) -> tuple[np.ndarray, np.ndarray]:
    """Uniformly random distinct tuples (the paper's control); the score is the draw order."""
    n, k, rng = spaces.num_classes, opt.tuple_size, np.random.default_rng(opt.seed)
    if math.comb(n, k) <= 1_000_000:
        cand = np.asarray(list(itertools.combinations(range(n), k)), np.int64)[rng.permutation(math.comb(n, k))]
    else:  # too many to list: draw, deduplicate, keep draw order
        draws = np.sort(np.stack([rng.choice(n, k, replace=False) for _ in range(8 * opt.count)]), 1)
        _, first = np.unique(draws, axis=0, return_index=True)
        cand = draws[np.sort(first)]
    keep = greedy_limit(cand, opt.count, opt.max_uses)
    return cand[keep], np.arange(len(keep), dtype=np.float64)


@register("embedding-distant")
def embedding_distant(spaces: Spaces, opt: Options):
    return ranked(spaces.distances("embedding"), opt, largest=True)


@register("embedding-close")
def embedding_close(spaces: Spaces, opt: Options):
    return ranked(spaces.distances("embedding"), opt, largest=False)


@register("condition-distant")
def condition_distant(spaces: Spaces, opt: Options):
    return ranked(spaces.distances("condition"), opt, largest=True)


@register("condition-close")
def condition_close(spaces: Spaces, opt: Options):
    return ranked(spaces.distances("condition"), opt, largest=False)


@register("triplet-sum-max")
def triplet_sum_max(spaces: Spaces, opt: Options):
    return ranked(spaces.distances("embedding"), opt, largest=True, k=3)


@register("triplet-sum-min")
def triplet_sum_min(spaces: Spaces, opt: Options):
    return ranked(spaces.distances("embedding"), opt, largest=False, k=3)


@dataclass
class Selection:
    """The selected tuples in rank order; tuple r becomes new class `num_real_classes + r`."""

    strategy: str
    tuples: np.ndarray  # int64 (N, K), training class ids
    scores: np.ndarray  # float64 (N,), the strategy's own score
    embedding_distance: np.ndarray | None = None  # summed pairwise distances, for every strategy alike
    condition_distance: np.ndarray | None = None

    def to_table(self, class_names: list[str] | None = None):
        import pyarrow as pa

        cols = {
            "rank": pa.array(np.arange(len(self.tuples)), pa.int64()),
            "classes": pa.array(self.tuples.tolist(), pa.list_(pa.int64())),
            "strategy": pa.array([self.strategy] * len(self.tuples), pa.string()),
            "score": pa.array(self.scores, pa.float64()),
        }
        if class_names is not None:
            cols["names"] = pa.array([[class_names[c] for c in t] for t in self.tuples], pa.list_(pa.string()))
        for name in ("embedding_distance", "condition_distance"):
            if getattr(self, name) is not None:
                cols[name] = pa.array(getattr(self, name), pa.float64())
        return pa.table(cols)

    def write(self, path: str | Path, class_names: list[str] | None = None) -> Path:
        import pyarrow.parquet as pq

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(self.to_table(class_names), path)
        return path

    @classmethod
    def read(cls, path: str | Path) -> Selection:
        import pyarrow.parquet as pq

        path = Path(path)
        if not path.is_file():
            raise ScoreMixError(f"pairs file not found: {path}")
        t = pq.read_table(path)
        missing = {"classes", "score"} - set(t.column_names)
        if missing:
            raise ScoreMixError(f"pairs file {path} lacks column(s) {', '.join(sorted(missing))}")
        tuples = t.column("classes").to_pylist()
        if len({len(x) for x in tuples}) > 1:
            raise ScoreMixError(f"pairs file {path}: tuples of different sizes in column 'classes'")
        strategy = t.column("strategy")[0].as_py() if "strategy" in t.column_names and len(t) else "file"
        return cls(strategy, np.asarray(tuples, np.int64).reshape(len(tuples), -1), t.column("score").to_numpy())


def tuple_size_of(strategy: str, tuple_size: int) -> int:
    """Classes in each tuple a strategy makes: the triplet strategies always make 3."""
    return 3 if strategy.startswith("triplet") else tuple_size


def check_feasible(
    strategy: str, num_classes: int, count: int, tuple_size: int = 2, max_uses: int | None = None
) -> None:
    """Whether `count` tuples can be drawn from `num_classes` training classes; run right after the data
    stage, so an impossible selection stops before any training (and again in `select`)."""
    if strategy not in STRATEGIES:
        raise ScoreMixError(f"unknown selection.strategy '{strategy}' (valid: {', '.join(STRATEGIES)})")
    n, k = num_classes, tuple_size_of(strategy, tuple_size)
    if k > n:
        raise ScoreMixError(f"selection needs tuples of {k} distinct classes; only {n} training classes")
    if max_uses is None and count > math.comb(n, k):
        raise ScoreMixError(f"selection.count={count} exceeds the {math.comb(n, k)} possible {k}-tuples of {n} classes")
    if max_uses is not None and count * k > n * max_uses:
        raise ScoreMixError(
            f"selection.count={count} tuples of {k} use {count * k} class slots; {n} classes x "
            f"selection.max_uses_per_class={max_uses} allow {n * max_uses}"
        )


def select(
    strategy: str, spaces: Spaces, count: int, tuple_size: int = 2, max_uses: int | None = None, seed: int = 0
) -> Selection:
    check_feasible(strategy, spaces.num_classes, count, tuple_size, max_uses)
    tuples, scores = STRATEGIES[strategy](spaces, Options(count, tuple_size, max_uses, seed))
    if len(tuples) < count:
        raise ScoreMixError(
            f"only {len(tuples)} tuples satisfy selection.max_uses_per_class={max_uses}; lower selection.count "
            f"({count}) or raise the limit"
        )
    dists = {
        w: tuple_distance(spaces.distances(w), tuples) if getattr(spaces, w) is not None else None
        for w in ("embedding", "condition")
    }
    return Selection(strategy, tuples, np.asarray(scores, np.float64), dists["embedding"], dists["condition"])
