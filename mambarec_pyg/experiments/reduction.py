"""Figure 6 of the MambaRec paper: the reduction factor r against accuracy and cost.

For each r (default :data:`~mambarec_pyg.experiments.paper.REDUCTION_FACTORS`;
``model.reduction_factor``), the row's configuration (default: the released
MambaRec) is trained and three numbers are reported:

* test Recall@20 at the best valid epoch (mean +- std over seeds);
* the parameter count of the model built for that r, as a percentage of r = 1's --
  in total, and without the raw item-feature tables (trainable in the released
  configuration, the same size for every r, and the largest part at Amazon scale);
* the training time per epoch (the median over a run's epochs, then the mean over
  seeds), as a percentage of r = 1's. Timings on a shared machine are noisy, and with
  ``model.compose_projection`` (the default) the two-stage projection costs the same
  for every r, so the time falls less than the paper's.

Without r = 1 in the grid, the percentages are of the smallest r (the report says
so). Outputs: ``reduction.md``, ``.csv``, ``.json``, ``.png``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Tuple

import numpy as np

from .paper import GRID_SOURCES, REDUCTION_FACTORS
from .report import aggregate, fmt, markdown_table, write_outputs
from .runner import CellResult, Collected, ExperimentResult, Runner, Setup, note
from .sweep import Setting, SweepExperiment

__all__ = ['Reduction', 'count_parameters']


def count_parameters(model) -> Tuple[int, int]:
    """``(all trainable parameters, those outside the raw item-feature tables)``;
    a feature table is a parameter under ``features.`` with one row per item."""
    total = feats = 0
    n_items = getattr(model, 'num_items', None)
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        total += p.numel()
        if name.startswith('features.') and p.dim() == 2 and p.size(0) == n_items:
            feats += p.numel()
    return total, total - feats


class Reduction(SweepExperiment):
    name = 'reduction'
    title = 'reduction factor r: Recall@20, parameters and training time (Figure 6)'
    paper_ref = 'Figure 6'
    default_datasets = ('baby', 'sports')

    @classmethod
    def add_arguments(cls, group) -> None:
        from ..cli.common import _arg_type
        group.add_argument('--reduction-factors', type=_arg_type(Tuple[int, ...]),
                           metavar='R1,R2', help='reduction factors r (default: '
                           f'{",".join(map(str, REDUCTION_FACTORS))})')

    def factors(self, setup: Setup) -> List[int]:
        return list(setup.options.get('reduction_factors') or REDUCTION_FACTORS)

    def settings(self, setup: Setup) -> List[Setting]:
        return [Setting(f'r={r}', f'r={r}', {'model.reduction_factor': r},
                        {'reduction_factor': r}) for r in self.factors(setup)]

    #: the parameter counts of every (dataset, row, r), written by :meth:`collect`.
    PARAMETERS_FILE = 'parameters.json'

    def collect(self, setup: Setup, results: List[CellResult], runner: Runner) -> None:
        """Count the parameters of every (dataset, row, r)'s model into
        ``OUTPUT/parameters.json`` (the report reads it)."""
        from ..io import write_json
        from ..train.experiment import build_model
        super().collect(setup, results, runner)
        out: Dict[str, List[int]] = {}
        for r in results:
            key = _key(r)
            if key in out or not r.ok:
                continue
            model = build_model(runner.data(r.cell.config.data), r.cell.config.model)
            out[key] = list(count_parameters(model))
            del model
        write_json(setup.output / self.PARAMETERS_FILE, out)

    def _parameters(self, collected: Collected
                    ) -> Dict[Tuple[str, str, int], Tuple[int, int]]:
        import json
        saved = collected.json(self.PARAMETERS_FILE)
        return {tuple(json.loads(k)): tuple(v) for k, v in saved.items()}

    def report(self, setup: Setup, results: List[CellResult],
               collected: Collected) -> ExperimentResult:
        rows = self.rows(setup)
        factors = self.factors(setup)
        stats = aggregate(results, ('dataset', 'row', 'reduction_factor'),
                          ('recall@20', 'ndcg@20'), setup.output)
        params = self._parameters(collected)
        times: Dict[Tuple, List[float]] = {}
        for r in results:
            if r.ok and math.isfinite(r.epoch_s):
                key = (r.cell.dataset.label, r.cell.row,
                       r.cell.labels['reduction_factor'])
                times.setdefault(key, []).append(r.epoch_s)
        base_r = 1 if 1 in factors else min(factors)
        caveat = note(setup)
        md = ['# Figure 6: reduction factor r', '',
              f'Percentages are of r = {base_r}'
              + ('' if base_r == 1 else ' (r = 1 is not in the grid)')
              + f'. r: {GRID_SOURCES["reduction_factor"]}. Training time: median '
                f'seconds per epoch of each run, mean over seeds (noisy on a shared '
                f'machine).', '']
        if caveat:
            md += [f'> **Note.** {caveat}.', '']
        records: List[Dict[str, Any]] = []
        table: Dict[str, Any] = {'experiment': self.name, 'paper': self.paper_ref,
                                 'note': caveat, 'seeds': setup.seeds,
                                 'reference_factor': base_r, 'datasets': {}}
        series: Dict[Tuple[str, str], Dict[str, list]] = {}
        for ds in setup.datasets:
            for p in rows:
                ref_p = params.get((ds.label, p.name, base_r))
                ref_t = times.get((ds.label, p.name, base_r))
                ref_t = float(np.mean(ref_t)) if ref_t else None
                body, entries = [], []
                sr = series.setdefault((ds.label, p.name), {k: [] for k in (
                    'r', 'recall', 'recall_std', 'params_pct', 'time_pct')})
                for r in factors:
                    st = stats.get((ds.label, p.name, r))
                    pr = params.get((ds.label, p.name, r))
                    tm = times.get((ds.label, p.name, r))
                    tm = float(np.mean(tm)) if tm else None
                    p_pct = 100.0 * pr[0] / ref_p[0] if pr and ref_p else None
                    pm_pct = 100.0 * pr[1] / ref_p[1] if pr and ref_p and ref_p[1] \
                        else None
                    t_pct = 100.0 * tm / ref_t if tm and ref_t else None
                    body.append([str(r), fmt(st['recall@20'] if st else None),
                                 f'{pr[0]:,}' if pr else '–', _pct(p_pct),
                                 f'{pr[1]:,}' if pr else '–', _pct(pm_pct),
                                 f'{tm:.3f}' if tm else '–', _pct(t_pct)])
                    entry = {'reduction_factor': r,
                             'recall@20': st['recall@20'].to_dict() if st else None,
                             'ndcg@20': st['ndcg@20'].to_dict() if st else None,
                             'parameters': pr[0] if pr else None,
                             'parameters_without_feature_tables': pr[1] if pr else None,
                             'parameters_percent': p_pct,
                             'parameters_without_feature_tables_percent': pm_pct,
                             'epoch_train_s': tm, 'epoch_train_percent': t_pct}
                    entries.append(entry)
                    records.append({'dataset': ds.label, 'row': p.name,
                                    'reduction_factor': r,
                                    'recall@20': st['recall@20'].mean if st else None,
                                    'recall@20_std': (st['recall@20'].std if st and
                                                      st['recall@20'].n > 1 else None),
                                    'parameters': entry['parameters'],
                                    'parameters_percent': p_pct,
                                    'parameters_without_feature_tables':
                                        entry['parameters_without_feature_tables'],
                                    'parameters_without_feature_tables_percent': pm_pct,
                                    'epoch_train_s': tm, 'epoch_train_percent': t_pct,
                                    'runs': ';'.join(st['recall@20'].runs) if st else ''})
                    if st:
                        sr['r'].append(r)
                        sr['recall'].append(st['recall@20'].mean)
                        sr['recall_std'].append(st['recall@20'].std)
                        sr['params_pct'].append(p_pct)
                        sr['time_pct'].append(t_pct)
                md += [f'## {ds.label}, {p.name}', '', markdown_table(
                    ['r', 'R@20', 'parameters', '% of r=' + str(base_r),
                     'without feature tables', '% of r=' + str(base_r),
                     's / epoch', '% of r=' + str(base_r)], body), '']
                table['datasets'][f'{ds.label}/{p.name}'] = entries
        files = write_outputs(setup.output, self.name, '\n'.join(md), records, table)
        if setup.figures:
            files['figure'] = self._figure(setup, series, base_r)
        return ExperimentResult(self.name, 'complete', results, files, table)

    def _figure(self, setup: Setup, series, base_r: int) -> str:
        from .plots import new_figure, save, title
        fig, axes = new_figure(1, len(series), panel=(4.4, 3.3))
        for ax, ((ds, row), s) in zip(axes[0], series.items()):
            if not s['r']:
                continue
            err = [e if math.isfinite(e) else 0 for e in s['recall_std']]
            ax.errorbar(s['r'], s['recall'], yerr=err, marker='o', color='#d62728',
                        capsize=2, label='Recall@20')
            ax.set_xscale('log', base=2)
            ax.set_xticks(s['r'])
            ax.set_xticklabels([str(r) for r in s['r']])
            ax.set_xlabel('reduction factor r')
            ax.set_ylabel('test Recall@20', color='#d62728')
            ax2 = ax.twinx()
            for key, c, lab in (('params_pct', '#1f77b4', 'parameters'),
                                ('time_pct', '#2ca02c', 'time / epoch')):
                ys = [np.nan if v is None else v for v in s[key]]
                ax2.plot(s['r'], ys, marker='s', linestyle='--', color=c,
                         label=f'{lab} (% of r={base_r})')
            ax2.set_ylabel(f'% of r = {base_r}')
            ax.set_title(ds if len({r for _, r in series}) == 1 else f'{ds}, {row}',
                         fontsize=10)
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = ax2.get_legend_handles_labels()
            ax.legend(h1 + h2, l1 + l2, fontsize=7, loc='upper center',
                      bbox_to_anchor=(0.5, -0.2), ncols=3)
            ax.grid(alpha=0.3)
        title(fig, 'Figure 6: reduction factor', setup.quick)
        return save(fig, setup.output / f'{self.name}.png')


def _pct(x) -> str:
    return '–' if x is None else f'{x:.1f}%'


def _key(r: CellResult) -> str:
    import json
    return json.dumps([r.cell.dataset.label, r.cell.row,
                       r.cell.labels['reduction_factor']])
