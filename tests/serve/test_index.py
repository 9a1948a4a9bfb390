"""The service's top-k indexes against plain loops: exact blocked inner products
(ties by smaller item id), faiss flat (equal to exact) and HNSW (high recall)."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from mambarec_pyg.serve.index import (ExactIndex, FaissIndex, import_faiss,
                                      make_index, normalize_rows, top_k)


def plain_top_k(queries, items, k, exclude=None):
    """Every query scored against every item in float64 by a Python loop, sorted by
    (score descending, item ascending)."""
    out = []
    for b, q in enumerate(queries):
        banned = set() if exclude is None else set(int(i) for i in exclude[b])
        pairs = sorted((-sum(float(x) * float(y) for x, y in zip(q, e)), i)
                       for i, e in enumerate(items) if i not in banned)
        out.append(([i for _, i in pairs[:k]], [-s for s, _ in pairs[:k]]))
    return out


def int_valued(rng, shape, low=-2, high=2):
    # small integers: float32 products and sums are exact, so scores tie exactly
    return rng.integers(low, high + 1, size=shape).astype(np.float32)


@pytest.mark.parametrize('block_elements', [1, 50, 1 << 22])
def test_exact_index_matches_a_plain_loop_with_ties(block_elements):
    rng = np.random.default_rng(0)
    N, d, B = 25, 3, 9
    items, queries = int_valued(rng, (N, d)), int_valued(rng, (B, d))
    exclude = [rng.choice(N, size=int(s), replace=False)
               for s in (0, 1, 5, 12, 0, N - 2, N, 3, 7)]
    index = ExactIndex(items, block_elements=block_elements)
    for k in (1, 3, 10, N - 1, N, N + 7):
        got = index.search(queries, k, exclude)
        want = plain_top_k(queries, items, k, exclude)
        assert len(got) == B
        for (gi, gs), (wi, ws) in zip(got, want):
            assert gi.tolist() == wi  # same items, same order (ties by item id)
            np.testing.assert_array_equal(gs, np.asarray(ws, dtype=np.float32))
            assert gi.dtype == np.int64 and gs.dtype == np.float32
    # without exclusion every item is a candidate
    got = index.search(queries, N + 1)
    assert [len(i) for i, _ in got] == [N] * B
    assert [g[0].tolist() for g in got] == [w[0] for w in
                                            plain_top_k(queries, items, N)]


def test_exact_index_ties_and_excluded_everything():
    items = np.ones((6, 2), dtype=np.float32)  # every score ties
    index = ExactIndex(items)
    (i0, s0), (i1, s1) = index.search(np.ones((2, 2), np.float32), 3,
                                      [np.array([0, 2]), np.arange(6)])
    assert i0.tolist() == [1, 3, 4] and s0.tolist() == [2.0, 2.0, 2.0]
    assert i1.size == 0 and s1.size == 0
    assert index.search(np.zeros((0, 2), np.float32), 3) == []


def test_top_k_matches_sorting():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(7, 40)).astype(np.float32)
    scores[rng.random(scores.shape) < 0.3] = -np.inf
    scores[2] = -np.inf
    scores[3, :10] = 0.5  # a tie group
    for k in (1, 5, 39, 40, 100):
        got = top_k(scores.copy(), k)
        for row, (items, vals) in zip(scores, got):
            want = sorted((-v, i) for i, v in enumerate(row.tolist()) if v != -np.inf)
            assert items.tolist() == [i for _, i in want[:k]]
            assert vals.tolist() == [-v for v, _ in want[:k]]
    with pytest.raises(ValueError, match='k >= 1'):
        top_k(scores, 0)


def test_normalize_rows():
    x = np.array([[3, 4], [0, 0], [1, 0]], dtype=np.float32)
    np.testing.assert_allclose(normalize_rows(x), [[0.6, 0.8], [0, 0], [1, 0]])


def test_faiss_flat_equals_exact():
    import_faiss()
    rng = np.random.default_rng(2)
    items = rng.normal(size=(300, 16)).astype(np.float32)
    queries = rng.normal(size=(20, 16)).astype(np.float32)
    exclude = [rng.choice(300, size=int(s), replace=False)
               for s in rng.integers(0, 40, size=20)]
    exact = ExactIndex(items).search(queries, 15, exclude)
    flat = FaissIndex(items, 'flat').search(queries, 15, exclude)
    for (ei, es), (fi, fs) in zip(exact, flat):
        assert fi.tolist() == ei.tolist()
        np.testing.assert_allclose(fs, es, rtol=1e-5, atol=1e-6)
    # k beyond the candidates: all of them
    few = FaissIndex(items[:10], 'flat').search(queries[:2], 50,
                                                [np.array([1, 2]), np.array([])])
    assert [len(i) for i, _ in few] == [8, 10]


def test_faiss_hnsw_finds_most_of_the_exact_top_k():
    import_faiss()
    rng = np.random.default_rng(3)
    items = rng.normal(size=(2000, 16)).astype(np.float32)
    queries = rng.normal(size=(50, 16)).astype(np.float32)
    exclude = [rng.choice(2000, size=20, replace=False) for _ in range(50)]
    exact = ExactIndex(items).search(queries, 10, exclude)
    hnsw = make_index('faiss-hnsw', items, hnsw_m=16, ef_search=64).search(
        queries, 10, exclude)
    hits = 0
    for b, ((ei, _), (hi, hs)) in enumerate(zip(exact, hnsw)):
        assert len(hi) == 10 and not set(hi.tolist()) & set(exclude[b].tolist())
        # returned scores are the exact inner products, best first
        np.testing.assert_allclose(hs, items[hi] @ queries[b], rtol=1e-5, atol=1e-5)
        assert (np.diff(hs) <= 1e-6).all()
        hits += len(set(hi.tolist()) & set(ei.tolist()))
    assert hits / 500 >= 0.9


def test_missing_faiss_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, 'faiss', None)
    with pytest.raises(ImportError, match=r"faiss-cpu.*mambarec-pyg\[serve\]"):
        FaissIndex(np.ones((3, 2), np.float32))
    with pytest.raises(ValueError, match='exact'):
        make_index('annoy', np.ones((3, 2), np.float32))
