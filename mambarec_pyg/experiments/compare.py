"""Paired comparisons of two sets of runs over the test users, for the reports.

:func:`compare_runs` takes the runs of two rows or settings on one dataset (one run
per seed each), averages each user's per-user test metric over each side's seeds,
pairs the users and applies :func:`~mambarec_pyg.experiments.significance.paired_tests`.
The per-user metrics are read from the files the experiment collected
(:class:`~mambarec_pyg.experiments.runner.Collected`); nothing is recomputed.
:func:`significance_section` renders the outcome as Markdown.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence

from .paper import METRICS, SIGNIFICANCE_LEVEL
from .report import METRIC_NAMES, markdown_table
from .runner import CellResult, Collected
from .significance import TEST_NAMES, align_users, average_over_seeds, paired_tests

__all__ = ['compare_runs', 'significance_section']


def compare_runs(collected: Collected, a_runs: Sequence[CellResult],
                 b_runs: Sequence[CellResult], a_name: str, b_name: str,
                 metrics: Sequence[str] = METRICS) -> Dict[str, Any]:
    """Paired tests of ``a`` against ``b`` per metric (see the module docstring);
    the runs used are listed (directories relative to the experiment's output).

    Raises:
        CollectedFileMissing: a finished run's per-user metrics file is missing.
    """
    root = collected.root
    entry: Dict[str, Any] = {'a': a_name, 'b': b_name,
                             'runs_a': [_rel(r, root) for r in a_runs],
                             'runs_b': [_rel(r, root) for r in b_runs],
                             'seeds_a': len(a_runs), 'seeds_b': len(b_runs),
                             'tests': {}}
    a_runs = [r for r in a_runs if r.ok]
    b_runs = [r for r in b_runs if r.ok]
    if not a_runs or not b_runs:
        entry['error'] = 'no finished runs to compare'
        return entry
    pa = [collected.per_user(r) for r in a_runs]
    pb = [collected.per_user(r) for r in b_runs]
    for m in metrics:
        if m not in pa[0] or m not in pb[0]:
            continue
        va, vb = align_users(average_over_seeds(pa, m), average_over_seeds(pb, m))
        try:
            entry['tests'][m] = paired_tests(va, vb, SIGNIFICANCE_LEVEL).to_dict()
        except ValueError as e:
            entry['tests'][m] = {'error': str(e)}
    return entry


def _rel(r: CellResult, root) -> str:
    try:
        return str(r.directory.relative_to(root))
    except ValueError:
        return str(r.directory)


def significance_section(comparisons: Dict[str, Dict[str, Any]]) -> List[str]:
    """Markdown: one table of paired tests per comparison."""
    md: List[str] = []
    for entry in comparisons.values():
        tests = entry.get('tests') or {}
        if not tests:
            if entry.get('error'):
                md += [f"Significance of {entry['a']} vs {entry['b']}: "
                       f"{entry['error']}.", '']
            continue
        n = next((t['n'] for t in tests.values() if 'n' in t), 0)
        md += [f"Significance of **{entry['a']}** vs **{entry['b']}** over {n} test "
               f"users (paired; each user's values averaged over {entry['seeds_a']} "
               f"and {entry['seeds_b']} seed(s)): {TEST_NAMES['t']}, and the "
               f"{TEST_NAMES['wilcoxon']}; significant: t-test p < "
               f"{SIGNIFICANCE_LEVEL:g}.", '']
        body = []
        for m, t in tests.items():
            if 'error' in t:
                body.append([METRIC_NAMES.get(m, m), '–', '–', '–', '–', '–',
                             t['error']])
                continue
            body.append([METRIC_NAMES.get(m, m), f"{t['mean_diff']:+.4f}",
                         f"{t['t']:.3f}", fmt_p(t['t_pvalue']), f"{t['wilcoxon']:.1f}",
                         fmt_p(t['wilcoxon_pvalue']),
                         'yes' if t['significant'] else 'no'])
        md += [markdown_table(['metric', 'mean diff', 't', 'p (t-test)', 'W',
                               'p (Wilcoxon)', f'p < {SIGNIFICANCE_LEVEL:g}'], body,
                              'lrrrrrr'), '']
    return md


def fmt_p(p: float) -> str:
    """A p-value for a table."""
    if p is None or not math.isfinite(p):
        return '–'
    return f'{p:.2e}' if p < 1e-3 else f'{p:.4f}'
