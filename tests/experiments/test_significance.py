"""The paired significance tests against scipy and a plain NumPy computation."""
import numpy as np
import pytest
from scipy import stats

from mambarec_pyg.experiments.significance import (align_users, average_over_seeds,
                                                    paired_tests, t_statistic)

# fixed per-user Recall@20 of two models on 12 users (values a metric can take)
A = np.array([0.5, 1.0, 0.0, 0.25, 1.0, 0.5, 0.0, 1.0, 0.75, 0.5, 1.0, 0.2])
B = np.array([0.5, 0.5, 0.0, 0.0, 1.0, 0.0, 0.25, 0.5, 0.5, 0.5, 0.6, 0.0])


def test_t_statistic_is_the_textbook_formula():
    d = A - B
    n = d.size
    mean = d.sum() / n
    sd = np.sqrt(((d - mean) ** 2).sum() / (n - 1))
    t, dof = t_statistic(A, B)
    assert dof == n - 1
    assert t == pytest.approx(mean / (sd / np.sqrt(n)), rel=1e-12)


def test_paired_tests_match_scipy():
    res = paired_tests(A, B, alpha=0.01)
    ref = stats.ttest_rel(A, B)
    assert res.t == pytest.approx(ref.statistic, rel=1e-10)
    assert res.t_pvalue == pytest.approx(ref.pvalue, rel=1e-10)
    w = stats.wilcoxon(A, B, zero_method='wilcox', alternative='two-sided')
    assert res.wilcoxon == pytest.approx(w.statistic)
    assert res.wilcoxon_pvalue == pytest.approx(w.pvalue)
    assert res.n == 12 and res.mean_diff == pytest.approx((A - B).mean())
    assert res.significant == (ref.pvalue < 0.01)
    # the t p-value from the t distribution by hand: 2 * P(T > |t|), dof n - 1
    assert res.t_pvalue == pytest.approx(2 * stats.t.sf(abs(res.t), 11), rel=1e-12)


def test_wilcoxon_statistic_is_the_smaller_signed_rank_sum():
    d = A - B
    d = d[d != 0]
    ranks = stats.rankdata(np.abs(d))
    expected = min(ranks[d > 0].sum(), ranks[d < 0].sum())
    assert paired_tests(A, B).wilcoxon == pytest.approx(expected)


def test_significance_on_a_large_clear_difference():
    rng = np.random.default_rng(0)
    b = rng.uniform(size=500)
    a = b + 0.05 + rng.normal(scale=0.05, size=500)
    res = paired_tests(a, b)
    assert res.significant and res.t_pvalue < 1e-10 and res.wilcoxon_pvalue < 1e-10
    ref = stats.ttest_rel(a, b)
    assert res.t == pytest.approx(ref.statistic, rel=1e-10)


def test_identical_and_constant_differences():
    same = paired_tests(A, A)
    assert same.t == 0 and same.t_pvalue == 1.0 and same.wilcoxon_pvalue == 1.0
    assert not same.significant
    quarters = np.arange(12) / 4  # exact in binary: every difference is exactly 0.5
    shifted = paired_tests(quarters + 0.5, quarters)
    assert shifted.t == np.inf and shifted.t_pvalue == 0.0 and shifted.significant
    with pytest.raises(ValueError, match='differ in length'):
        paired_tests(A, B[:-1])
    with pytest.raises(ValueError, match='at least 2'):
        paired_tests([0.5], [0.1])


def test_users_are_averaged_over_seeds_then_paired():
    seed1 = {'users': np.array([3, 1, 2]), 'recall@20': np.array([0.3, 0.1, 0.2])}
    seed2 = {'users': np.array([1, 2, 3]), 'recall@20': np.array([0.5, 0.0, 0.1])}
    users, values = average_over_seeds([seed1, seed2], 'recall@20')
    assert users.tolist() == [1, 2, 3]
    assert values == pytest.approx([0.3, 0.1, 0.2])
    other = (np.array([2, 3, 4]), np.array([0.9, 0.8, 0.7]))
    va, vb = align_users((users, values), other)
    assert va == pytest.approx([0.1, 0.2]) and vb == pytest.approx([0.9, 0.8])
