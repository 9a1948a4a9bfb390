r"""Paired significance tests of a difference in test metrics, over test users.

The MambaRec paper (Table 2) marks its improvements as significant by "t-tests" at
:math:`p < 0.01` without saying which; the natural reading, used here, is a paired
test over the test users: both models are evaluated on the same users, so each user
contributes one difference :math:`d_u = a_u - b_u` of their per-user Recall@K (or
NDCG@K). With several seeds, each user's values are first averaged over that
model's seeds (:func:`average_over_seeds`), so a user is still one observation.

Two tests are reported, both two-sided:

* the paired t-test (:func:`scipy.stats.ttest_rel`):

  .. math::
      t = \frac{\bar d}{s_d / \sqrt{n}}, \qquad
      s_d^2 = \frac{1}{n - 1}\sum_u (d_u - \bar d)^2,

  with :math:`n - 1` degrees of freedom. The statistic is computed here in NumPy
  and its p-value from Student's t distribution
  (:data:`scipy.stats.t`), which is what ``ttest_rel`` computes; the tests check
  both against ``ttest_rel``.
* the Wilcoxon signed-rank test (:func:`scipy.stats.wilcoxon`, zero differences
  dropped -- Wilcoxon's convention), which does not assume normal differences:
  per-user Recall@K takes few distinct values, so the t-test's normality is only
  asymptotic.

Degenerate inputs: when every difference is 0 the models rank every user alike and
both p-values are 1; when the differences are all equal but not 0 (no variance)
the t statistic is infinite and its p-value 0.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Dict, Mapping, Sequence, Tuple

import numpy as np

__all__ = ['PairedTest', 'paired_tests', 't_statistic', 'average_over_seeds',
           'align_users', 'TEST_NAMES']

#: how the tests are named in the reports.
TEST_NAMES = {
    't': 'paired t-test over test users (scipy.stats.ttest_rel, two-sided)',
    'wilcoxon': 'Wilcoxon signed-rank test over test users (scipy.stats.wilcoxon, '
                'two-sided, zero differences dropped)',
}


@dataclass
class PairedTest:
    """The outcome of :func:`paired_tests` for one metric."""

    #: users paired.
    n: int
    #: means of the two samples and of their difference ``a - b``.
    mean_a: float
    mean_b: float
    mean_diff: float
    #: paired t statistic and two-sided p-value.
    t: float
    t_pvalue: float
    #: Wilcoxon signed-rank statistic (the smaller rank sum) and two-sided p-value.
    wilcoxon: float
    wilcoxon_pvalue: float
    #: the significance level, and whether the t-test's p-value is below it.
    alpha: float
    significant: bool

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def t_statistic(a: Sequence[float], b: Sequence[float]) -> Tuple[float, int]:
    """The paired t statistic of ``a - b`` and its degrees of freedom ``n - 1``
    (plain NumPy, float64)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n = d.size
    if n < 2:
        raise ValueError(f'a paired t-test needs at least 2 pairs, got {n}')
    mean = d.mean()
    sd = d.std(ddof=1)
    if sd == 0.0:
        return (0.0 if mean == 0.0 else float(np.copysign(np.inf, mean))), n - 1
    return float(mean / (sd / np.sqrt(n))), n - 1


def paired_tests(a: Sequence[float], b: Sequence[float],
                 alpha: float = 0.01) -> PairedTest:
    """Paired t-test and Wilcoxon signed-rank test of ``a`` against ``b`` (one value
    per user, in the same user order; two-sided); see the module docstring."""
    from scipy import stats
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape:
        raise ValueError(f'paired samples differ in length: {a.size} and {b.size}')
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise ValueError('paired samples must be finite')
    t, dof = t_statistic(a, b)
    d = a - b
    if np.all(d == 0):
        t_p, w, w_p = 1.0, 0.0, 1.0
    else:
        t_p = float(2.0 * stats.t.sf(abs(t), dof)) if np.isfinite(t) else 0.0
        res = stats.wilcoxon(a, b, zero_method='wilcox', alternative='two-sided')
        w, w_p = float(res.statistic), float(res.pvalue)
    return PairedTest(n=int(a.size), mean_a=float(a.mean()), mean_b=float(b.mean()),
                      mean_diff=float(d.mean()), t=float(t), t_pvalue=float(t_p),
                      wilcoxon=w, wilcoxon_pvalue=w_p, alpha=float(alpha),
                      significant=bool(t_p < alpha))


def average_over_seeds(runs: Sequence[Mapping[str, np.ndarray]],
                       metric: str) -> Tuple[np.ndarray, np.ndarray]:
    """``(users, values)``: each user's ``metric`` averaged over ``runs`` (the
    per-user results of one model's seeds, each with ``'users'`` and ``metric``).

    Only users present in every run are kept (the same data give the same users).
    """
    if not runs:
        raise ValueError('no runs to average')
    common = None
    for r in runs:
        u = np.asarray(r['users'])
        common = u if common is None else np.intersect1d(common, u)
    common = np.unique(common)
    total = np.zeros(common.size, dtype=np.float64)
    for r in runs:
        u = np.asarray(r['users'])
        order = np.argsort(u)
        pos = order[np.searchsorted(u[order], common)]
        total += np.asarray(r[metric], dtype=np.float64)[pos]
    return common, total / len(runs)


def align_users(a: Tuple[np.ndarray, np.ndarray],
                b: Tuple[np.ndarray, np.ndarray]) -> Tuple[np.ndarray, np.ndarray]:
    """The values of two ``(users, values)`` pairs on their common users, in the same
    order."""
    users = np.intersect1d(a[0], b[0])
    va = a[1][np.searchsorted(a[0], users)]
    vb = b[1][np.searchsorted(b[0], users)]
    return va, vb
