"""Figures 4 and 5 of the MambaRec paper: sensitivity to the InfoNCE weight, and to
the reduction factor x MMD weight.

* Figure 4 -- Recall@20 and NDCG@20 on test against the InfoNCE weight
  :math:`\\lambda_{cl}` (``model.cl_weight``), default grid
  :data:`~mambarec_pyg.experiments.paper.CL_WEIGHTS` (the paper's range
  :math:`[10^{-4}, 1]` in decades);
* Figure 5 -- Recall@20 on test over reduction factor :math:`r`
  (``model.reduction_factor``) :math:`\\times` MMD weight :math:`\\lambda_{mmd}`
  (``model.mmd_weight``), default grid
  :data:`~mambarec_pyg.experiments.paper.REDUCTION_FACTORS` :math:`\\times`
  :data:`~mambarec_pyg.experiments.paper.MMD_WEIGHTS`.

Every other option is the row's (default: the released MambaRec: :math:`\\lambda_{cl}
= 0.01`, :math:`r = 8`, :math:`\\lambda_{mmd} = 0.15`), so Figure 4's 0.01 and Figure
5's (8, 0.15) are the same run, trained once. The paper shows Baby and Sports.

Outputs: ``sensitivity.md``, ``.csv``, ``.json``, ``figure4_cl_weight.png``,
``figure5_reduction_mmd.png``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Sequence

import numpy as np

from .paper import CL_WEIGHTS, GRID_SOURCES, MMD_WEIGHTS, REDUCTION_FACTORS
from .report import aggregate, fmt, markdown_table, marks, write_outputs
from .runner import CellResult, Collected, ExperimentResult, Setup, note
from .sweep import Setting, SweepExperiment, number_key

__all__ = ['Sensitivity']

_METRICS = ('recall@20', 'ndcg@20')


class Sensitivity(SweepExperiment):
    name = 'sensitivity'
    title = 'sensitivity to the InfoNCE weight and to r x MMD weight (Figures 4-5)'
    paper_ref = 'Figures 4 and 5'
    default_datasets = ('baby', 'sports')

    @classmethod
    def add_arguments(cls, group) -> None:
        from typing import Tuple
        from ..cli.common import _arg_type
        group.add_argument('--part', choices=('both', 'figure4', 'figure5'),
                           default='both', help='Figure 4 (InfoNCE weight), Figure 5 '
                           '(r x MMD weight) or both (default)')
        group.add_argument('--cl-weights', type=_arg_type(Tuple[float, ...]),
                           metavar='W1,W2', help='Figure 4 grid (default: '
                           f'{",".join(f"{w:g}" for w in CL_WEIGHTS)})')
        group.add_argument('--mmd-weights', type=_arg_type(Tuple[float, ...]),
                           metavar='W1,W2', help='Figure 5 columns (default: '
                           f'{",".join(f"{w:g}" for w in MMD_WEIGHTS)})')
        group.add_argument('--reduction-factors', type=_arg_type(Tuple[int, ...]),
                           metavar='R1,R2', help='reduction factors r (default: '
                           f'{",".join(map(str, REDUCTION_FACTORS))})')

    def _parts(self, setup: Setup) -> Sequence[str]:
        part = setup.options.get('part') or 'both'
        return ('figure4', 'figure5') if part == 'both' else (part, )

    def grids(self, setup: Setup) -> Dict[str, List]:
        o = setup.options
        return {'cl_weight': list(o.get('cl_weights') or CL_WEIGHTS),
                'reduction_factor': list(o.get('reduction_factors') or
                                         REDUCTION_FACTORS),
                'mmd_weight': list(o.get('mmd_weights') or MMD_WEIGHTS)}

    def settings(self, setup: Setup) -> List[Setting]:
        g = self.grids(setup)
        out = []
        if 'figure4' in self._parts(setup):
            for w in g['cl_weight']:
                out.append(Setting(f'cl_weight={number_key(w)}',
                                   f'λ_cl={number_key(w)}', {'model.cl_weight': w},
                                   {'figure': 4, 'cl_weight': w}))
        if 'figure5' in self._parts(setup):
            for r in g['reduction_factor']:
                for w in g['mmd_weight']:
                    out.append(Setting(f'r={r},mmd_weight={number_key(w)}',
                                       f'r={r}, λ_mmd={number_key(w)}',
                                       {'model.reduction_factor': r,
                                        'model.mmd_weight': w},
                                       {'figure': 5, 'reduction_factor': r,
                                        'mmd_weight': w}))
        return out

    # -- report -------------------------------------------------------------------
    def report(self, setup: Setup, results: List[CellResult],
               collected: Collected) -> ExperimentResult:
        rows = self.rows(setup)
        g = self.grids(setup)
        parts = self._parts(setup)
        caveat = note(setup)
        md = ['# Sensitivity (Figures 4 and 5): test metrics at the best valid epoch', '']
        if caveat:
            md += [f'> **Note.** {caveat}.', '']
        records: List[Dict[str, Any]] = []
        table: Dict[str, Any] = {'experiment': self.name, 'paper': self.paper_ref,
                                 'note': caveat, 'seeds': setup.seeds,
                                 'grids': g, 'grid_sources': GRID_SOURCES}
        files: Dict[str, str] = {}
        fig4 = [r for r in results if r.cell.labels.get('figure') == 4]
        fig5 = [r for r in results if r.cell.labels.get('figure') == 5]
        s4 = aggregate(fig4, ('dataset', 'row', 'cl_weight'), _METRICS, setup.output)
        s5 = aggregate(fig5, ('dataset', 'row', 'reduction_factor', 'mmd_weight'),
                       _METRICS, setup.output)
        if 'figure4' in parts:
            md += [f'## Figure 4: InfoNCE weight λ_cl ({GRID_SOURCES["cl_weight"]})', '']
            t4 = {}
            for ds in setup.datasets:
                for p in rows:
                    vals = {w: s4.get((ds.label, p.name, w)) for w in g['cl_weight']}
                    mk = {m: marks({w: v[m].mean for w, v in vals.items() if v})
                          for m in _METRICS}
                    body = [[number_key(w)] + [fmt(v[m] if v else None,
                                                   mark=mk[m].get(w))
                                               for m in _METRICS]
                            for w, v in vals.items()]
                    md += [f'### {ds.label}, {p.name}', '',
                           markdown_table(['λ_cl', 'R@20', 'N@20'], body), '']
                    t4[f'{ds.label}/{p.name}'] = {
                        number_key(w): ({m: v[m].to_dict() for m in _METRICS}
                                        if v else None) for w, v in vals.items()}
                    for w, v in vals.items():
                        for m in _METRICS:
                            records.append(_record(4, ds.label, p.name, m, v,
                                                   cl_weight=w))
            table['figure4'] = t4
        if 'figure5' in parts:
            md += ['## Figure 5: test Recall@20 over reduction factor r (rows) x MMD '
                   'weight λ_mmd (columns)', '',
                   f'r: {GRID_SOURCES["reduction_factor"]}; λ_mmd: '
                   f'{GRID_SOURCES["mmd_weight"]}.', '']
            t5 = {}
            for ds in setup.datasets:
                for p in rows:
                    grid = {(r, w): s5.get((ds.label, p.name, r, w))
                            for r in g['reduction_factor'] for w in g['mmd_weight']}
                    mk = marks({k: v['recall@20'].mean for k, v in grid.items() if v})
                    body = [[f'r = {r}'] + [fmt(grid[(r, w)]['recall@20']
                                                if grid[(r, w)] else None,
                                                mark=mk.get((r, w)))
                                            for w in g['mmd_weight']]
                            for r in g['reduction_factor']]
                    md += [f'### {ds.label}, {p.name}', '', markdown_table(
                        ['R@20'] + [f'λ_mmd = {number_key(w)}' for w in g['mmd_weight']],
                        body), '']
                    t5[f'{ds.label}/{p.name}'] = [
                        {'reduction_factor': r, 'mmd_weight': w,
                         **({m: v[m].to_dict() for m in _METRICS} if v else {})}
                        for (r, w), v in grid.items()]
                    for (r, w), v in grid.items():
                        for m in _METRICS:
                            records.append(_record(5, ds.label, p.name, m, v,
                                                   reduction_factor=r, mmd_weight=w))
            table['figure5'] = t5
        files.update(write_outputs(setup.output, self.name, '\n'.join(md), records,
                                   table))
        if setup.figures:
            if 'figure4' in parts:
                files['figure4'] = self._figure4(setup, rows, g, s4)
            if 'figure5' in parts:
                files['figure5'] = self._figure5(setup, rows, g, s5)
        return ExperimentResult(self.name, 'complete', results, files, table)

    def _figure4(self, setup: Setup, rows, g, stats) -> str:
        from .plots import color, dataset_color, new_figure, save, title
        fig, axes = new_figure(1, len(_METRICS), panel=(4.2, 3.2))
        for ax, m in zip(axes[0], _METRICS):
            k = 0
            for i, ds in enumerate(setup.datasets):
                for p in rows:
                    xs = [w for w in g['cl_weight'] if (ds.label, p.name, w) in stats]
                    if not xs:
                        continue
                    st = [stats[(ds.label, p.name, w)][m] for w in xs]
                    ys = np.array([s.mean for s in st])
                    err = np.array([s.std if math.isfinite(s.std) else 0 for s in st])
                    c = dataset_color(ds.label, i) if len(rows) == 1 else color(k)
                    ax.errorbar(xs, ys, yerr=err, marker='o', color=c, capsize=2,
                                label=ds.label + ('' if len(rows) == 1 else
                                                  f', {p.name}'))
                    k += 1
            ax.set_xscale('log')
            ax.set_xlabel('InfoNCE weight λ_cl')
            ax.set_ylabel(f'test {m}')
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        title(fig, 'Figure 4: MambaRec against the InfoNCE weight λ_cl', setup.quick)
        return save(fig, setup.output / 'figure4_cl_weight.png')

    def _figure5(self, setup: Setup, rows, g, stats) -> str:
        from .plots import new_figure, save, title
        panels = [(ds, p) for ds in setup.datasets for p in rows]
        rs, ws = g['reduction_factor'], g['mmd_weight']
        fig, axes = new_figure(1, len(panels),
                               panel=(max(3.4, 0.9 * len(ws) + 1.6),
                                      max(3.0, 0.45 * len(rs) + 1.2)))
        for ax, (ds, p) in zip(axes[0], panels):
            z = np.full((len(rs), len(ws)), np.nan)
            for a, r in enumerate(rs):
                for b, w in enumerate(ws):
                    st = stats.get((ds.label, p.name, r, w))
                    if st:
                        z[a, b] = st['recall@20'].mean
            im = ax.imshow(z, cmap='viridis', aspect='auto', origin='upper')
            ax.set_xticks(range(len(ws)))
            ax.set_xticklabels([number_key(w) for w in ws])
            ax.set_yticks(range(len(rs)))
            ax.set_yticklabels([str(r) for r in rs])
            ax.set_xlabel('MMD weight λ_mmd')
            ax.set_ylabel('reduction factor r')
            finite = z[np.isfinite(z)]
            mid = (finite.min() + finite.max()) / 2 if finite.size else 0
            for a in range(len(rs)):
                for b in range(len(ws)):
                    if np.isfinite(z[a, b]):
                        ax.text(b, a, f'{z[a, b]:.3f}', ha='center', va='center',
                                fontsize=7, color='white' if z[a, b] < mid else 'black')
            if finite.size:
                a, b = np.unravel_index(np.nanargmax(z), z.shape)
                ax.add_patch(_rect(b, a))
            ax.set_title(f'{ds.label}' + ('' if len(rows) == 1 else f', {p.name}'),
                         fontsize=10)
            fig.colorbar(im, ax=ax, label='test Recall@20', shrink=0.85)
        title(fig, 'Figure 5: test Recall@20 over r x λ_mmd (box: best)', setup.quick)
        return save(fig, setup.output / 'figure5_reduction_mmd.png')


def _rect(x: int, y: int):
    from matplotlib.patches import Rectangle
    return Rectangle((x - 0.5, y - 0.5), 1, 1, fill=False, edgecolor='red', linewidth=2)


def _record(figure: int, dataset: str, row: str, metric: str, stat,
            **values) -> Dict[str, Any]:
    return {'figure': figure, 'dataset': dataset, 'row': row,
            'cl_weight': values.get('cl_weight'),
            'reduction_factor': values.get('reduction_factor'),
            'mmd_weight': values.get('mmd_weight'), 'metric': metric,
            'mean': stat[metric].mean if stat else None,
            'std': stat[metric].std if stat and stat[metric].n > 1 else None,
            'n': stat[metric].n if stat else 0,
            'runs': ';'.join(stat[metric].runs) if stat else ''}
