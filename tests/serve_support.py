"""Helpers of the serving tests (tests/serve/): the optional ``serve`` extra, and
the comparison of two rankings that may order tied scores differently."""
from __future__ import annotations

from typing import List, Sequence, Set, Tuple

import numpy as np
import pytest


def require(module: str):
    """Import ``module`` of the ``serve`` extra. The ``test`` extra installs it, so
    CI runs these tests; a user without the extra gets a skip naming it."""
    return pytest.importorskip(module, reason=f"needs {module}: pip install "
                                              f"'mambarec-pyg[serve]'")


def tie_groups(items: Sequence[int], scores: np.ndarray,
               tol: float) -> List[Tuple[float, Set[int]]]:
    """Consecutive items of a ranking grouped by equal score (within ``tol``,
    relative to the score's size); ``scores`` holds every item's score."""
    groups: List[Tuple[float, Set[int]]] = []
    for i in items:
        s = float(scores[i])
        if groups and abs(s - groups[-1][0]) <= tol * max(1.0, abs(s)):
            groups[-1][1].add(i)
        else:
            groups.append((s, {i}))
    return groups


def assert_same_ranking(got: Sequence[int], want: Sequence[int], scores: np.ndarray,
                        candidates: np.ndarray, tol: float = 1e-5) -> None:
    """``got`` and ``want`` are the same top-k list of ``candidates`` (a boolean mask
    over items) by ``scores`` (every item's exact score), up to the order of tied
    scores: the same length; group by group of equal scores the same items, except
    in the last group, which the k-th place may cut, where both take items of that
    score; and nothing left out scores higher than what was taken."""
    assert len(got) == len(want), (got, want)
    assert len(set(got)) == len(got) and all(candidates[i] for i in got), got
    g, w = tie_groups(got, scores, tol), tie_groups(want, scores, tol)
    assert len(g) == len(w), (got, want)
    for n, ((sg, ig), (sw, iw)) in enumerate(zip(g, w)):
        assert abs(sg - sw) <= tol * max(1.0, abs(sg)), (got, want)
        if n < len(g) - 1:
            assert ig == iw, (got, want)
        else:
            assert len(ig) == len(iw), (got, want)
    if got:
        rest = candidates.copy()
        rest[list(got)] = False
        lowest = float(scores[got[-1]])
        if rest.any():
            assert float(scores[rest].max()) <= lowest + tol * max(1.0, abs(lowest))
