"""Table 2 of the MambaRec paper: every model on every dataset, with significance.

Each cell is one full training run under the shared protocol (MMRec's: early
stopping on valid Recall@20, test metrics at the best valid epoch), each model with
its default configuration, or -- with ``--search`` -- with the point of its own grid
(the model config's ``GRID``, as ``mambarec search``) that is best on **valid**
Recall@20 at the first seed, then trained at the other seeds.

The report (``table2.md``, ``.csv``, ``.json``, ``.png``) gives Recall@10/20 and
NDCG@10/20 on test, mean +- std over seeds, the best and second best per dataset and
metric marked, the paper's own Table 2 numbers beside ours on the paper's datasets,
the improvement of MambaRec (and of every other MambaRec row, e.g. a preset) over
the best baseline, and paired significance tests of the difference from the best
baseline by mean test Recall@20 over the test users
(:mod:`~mambarec_pyg.experiments.significance`).

Default rows: most-popular and the registered models of the paper's Table 2, in its
order (:data:`~mambarec_pyg.models.registry.PAPER_ORDER`). The other built-in models
(BM3, which the paper only cites, and the rest of MMRec's zoo: LayerGCN, ...) are
rows when asked for with ``--models``; they are then marked as not in the paper.
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .paper import METRICS, SIGNIFICANCE_LEVEL, TABLE2, table2_value
from .presets import Preset, resolve_row
from .report import (METRIC_NAMES, aggregate, fmt, fmt_value, markdown_table, marks,
                     write_outputs)
from .compare import compare_runs, significance_section
from .runner import (Cell, CellResult, Collected, Experiment, ExperimentResult,
                     Runner, Setup, note)
from .significance import TEST_NAMES

__all__ = ['Table2', 'default_rows', 'compare']

#: the model MambaRec's rows are configurations of.
CHALLENGER = 'mambarec'


def default_rows() -> List[str]:
    """Most-popular and the registered models of the paper's Table 2, in its
    order."""
    from ..models.registry import PAPER_ORDER, list_models
    registered = set(list_models())
    return [m for m in PAPER_ORDER
            if m in registered and (m in TABLE2 or m == 'popularity')]


def _point_name(values: Dict[str, Any]) -> str:
    return ','.join(f"{k.split('.')[-1]}={v}" for k, v in values.items()) or 'default'


class Table2(Experiment):
    name = 'table2'
    title = 'overall performance of every model (Table 2)'
    paper_ref = 'Table 2'
    per_user = True

    @classmethod
    def add_arguments(cls, group) -> None:
        group.add_argument('--search', action='store_true', help="run each model's grid "
                           "(its GRID, as `mambarec search`) at the first seed and "
                           'keep the point best on valid Recall@20')

    # -- planning -----------------------------------------------------------------
    def rows(self, setup: Setup) -> List[Preset]:
        names = setup.models or default_rows()
        return [resolve_row(n) for n in dict.fromkeys(names)]

    def _grid(self, setup: Setup, preset: Preset, config) -> Dict[str, list]:
        from ..train.search import default_grid
        return default_grid(config) if setup.search else {}

    def _points(self, setup: Setup, preset: Preset, config) -> List[Dict[str, Any]]:
        import itertools
        grid = self._grid(setup, preset, config)
        keys = list(grid)
        return [dict(zip(keys, combo)) for combo in
                itertools.product(*(grid[k] for k in keys))] if grid else [{}]

    def plan(self, setup: Setup) -> List[Cell]:
        """The first stage: every row's default (or, with ``--search``, every grid
        point at the first seed)."""
        cells = []
        for ds in setup.datasets:
            for preset in self.rows(setup):
                base = preset.apply(setup.base_config(ds, setup.seeds[0]))
                points = self._points(setup, preset, base)
                if points == [{}]:
                    for seed in setup.seeds:
                        cfg = preset.apply(setup.base_config(ds, seed))
                        cells.append(Cell(f'{ds.label}/{preset.name}/seed-{seed}', ds,
                                          preset.name, seed, cfg,
                                          {'model': preset.model}))
                    continue
                for values in points:
                    cfg = base.with_overrides(values)
                    name = _point_name(values)
                    cells.append(Cell(
                        f'{ds.label}/{preset.name}/search/{name}/seed-{setup.seeds[0]}',
                        ds, preset.name, setup.seeds[0], cfg,
                        {'model': preset.model, 'point': name, 'search': True}))
        return cells

    def planned_total(self, setup: Setup) -> int:
        first = self.plan(setup)
        searched = {(c.dataset.label, c.row) for c in first if c.labels.get('search')}
        return len(first) + len(searched) * (len(setup.seeds) - 1)

    def execute(self, setup: Setup, runner: Runner) -> List[CellResult]:
        first = runner.run(self.plan(setup))
        self.selection: Dict[Tuple[str, str], Dict[str, Any]] = {}
        out = [r for r in first if not r.cell.labels.get('search')]
        later: List[Cell] = []
        groups: Dict[Tuple[str, str], List[CellResult]] = {}
        for r in first:
            if r.cell.labels.get('search'):
                groups.setdefault((r.cell.dataset.label, r.cell.row), []).append(r)
        for (ds_label, row), points in groups.items():
            metric = points[0].cell.config.train.valid_metric
            ok = [p for p in points if p.ok]
            if not ok:
                out.extend(points)  # all failed: the row reports the failure
                continue
            best = max(ok, key=lambda p: p.valid.get(metric, float('-inf')))
            self.selection[(ds_label, row)] = {
                'selection': f'best valid {metric} at seed {setup.seeds[0]} (test '
                             f'metrics never used to choose)',
                'selected': best.cell.labels['point'],
                'points': [{'point': p.cell.labels['point'], 'status': p.status,
                            f'valid {metric}': p.valid.get(metric),
                            'run': str(p.directory.relative_to(setup.output))}
                           for p in points]}
            best.cell.labels['selected'] = True
            out.append(best)
            for seed in setup.seeds[1:]:
                cfg = best.cell.config.with_overrides({'train.seed': seed})
                later.append(Cell(f'{ds_label}/{row}/selected/{best.cell.labels["point"]}'
                                  f'/seed-{seed}', best.cell.dataset, row, seed, cfg,
                                  {'model': best.cell.labels['model'],
                                   'point': best.cell.labels['point'],
                                   'selected': True}))
        out.extend(runner.run(later))
        return out

    # -- report -------------------------------------------------------------------
    def report(self, setup: Setup, results: List[CellResult],
               collected: Collected) -> ExperimentResult:
        rows = self.rows(setup)
        stats = aggregate(results, ('dataset', 'row'), METRICS, setup.output)
        md = ['# Table 2: overall performance (test, at the best valid epoch)', '']
        caveat = note(setup)
        if caveat:
            md += [f'> **Note.** {caveat}.', '']
        md += [_protocol_line(setup, self), '']
        records: List[Dict[str, Any]] = []
        table: Dict[str, Any] = {
            'experiment': self.name, 'paper': self.paper_ref, 'note': caveat,
            'metrics': list(METRICS), 'seeds': setup.seeds, 'tests': TEST_NAMES,
            'significance_level': SIGNIFICANCE_LEVEL, 'datasets': {}}
        for ds in setup.datasets:
            entry = self._dataset_report(setup, ds, rows, stats, results, collected)
            table['datasets'][ds.label] = entry['json']
            md += entry['markdown']
            records += entry['records']
        not_in_paper = [p.name for p in rows if not _in_paper(p)]
        if not_in_paper:
            md += [f'† not in the paper\'s Table 2: {", ".join(not_in_paper)}.', '']
        if getattr(self, 'selection', None):
            table['search'] = {f'{d}/{r}': v for (d, r), v in self.selection.items()}
        files = write_outputs(setup.output, self.name, '\n'.join(md), records, table)
        if setup.figures:
            files['figure'] = self._figure(setup, rows, stats)
        return ExperimentResult(self.name, 'complete', results, files, table)

    def _dataset_report(self, setup, ds, rows, stats, results,
                        collected) -> Dict[str, Any]:
        label = ds.label
        present = [p for p in rows if (label, p.name) in stats]
        mk = {m: marks({p.name: stats[(label, p.name)][m].mean for p in present})
              for m in METRICS}
        show_paper = bool(ds.paper)
        header = ['model'] + [METRIC_NAMES[m] for m in METRICS]
        if show_paper:
            header += [f'paper {METRIC_NAMES[m]}' for m in METRICS]
        body, records = [], []
        out_rows: Dict[str, Any] = {}
        for p in rows:
            s = stats.get((label, p.name))
            name = p.name + ('' if _in_paper(p) else ' †')
            cells = [fmt(s[m] if s else None, mark=mk[m].get(p.name)) for m in METRICS]
            paper = {m: (table2_value(p.name, ds.paper, m) if p.name == p.model
                         else None) for m in METRICS}
            if show_paper:
                cells += [fmt_value(paper[m]) for m in METRICS]
            body.append([name] + cells)
            out_rows[p.name] = {
                'model': p.model, 'overrides': dict(p.overrides),
                'in_paper': _in_paper(p),
                'metrics': {m: ({**s[m].to_dict(), 'mark': mk[m].get(p.name),
                                 'paper': paper[m]} if s else None) for m in METRICS}}
            for m in METRICS:
                records.append({'dataset': label, 'row': p.name, 'model': p.model,
                                'metric': m, 'mean': s[m].mean if s else None,
                                'std': (s[m].std if s and s[m].n > 1 else None),
                                'n': s[m].n if s else 0, 'mark': mk[m].get(p.name) or '',
                                'paper': paper[m],
                                'runs': ';'.join(s[m].runs) if s else ''})
        md = [f'## {label}' + (f' (the paper\'s {ds.paper})' if ds.paper else ''), '']
        comparison = compare(setup, collected, results, label, present, stats, ds.paper)
        if comparison['improvement']:
            for ch, imp in comparison['improvement'].items():
                row = [f'improvement of {ch} over the best baseline']
                row += [(f"{imp[m]['percent']:+.2f}% (vs {imp[m]['baseline']})"
                         if imp[m] else '–') for m in METRICS]
                if show_paper:
                    row += [(f"{imp[m]['paper_percent']:+.2f}%"
                             if imp[m] and imp[m].get('paper_percent') is not None
                             else '–') for m in METRICS]
                body.append(row)
        md += [markdown_table(header, body), '']
        md += significance_section(comparison['significance'])
        return {'markdown': md, 'records': records,
                'json': {'paper_dataset': ds.paper, 'synthetic': ds.synthetic,
                         'rows': out_rows, **comparison}}

    def _figure(self, setup: Setup, rows: Sequence[Preset], stats) -> str:
        from .plots import grouped_bars, new_figure, save, title
        fig, axes = new_figure(1, len(setup.datasets),
                               panel=(max(4.0, 0.55 * len(rows) + 1.5), 3.4))
        for ax, ds in zip(axes[0], setup.datasets):
            present = [p for p in rows if (ds.label, p.name) in stats]
            series, errors, markers = {}, {}, {}
            for m in ('recall@20', 'ndcg@20'):
                series[METRIC_NAMES[m]] = [stats[(ds.label, p.name)][m].mean
                                           for p in present]
                errors[METRIC_NAMES[m]] = [stats[(ds.label, p.name)][m].std
                                           for p in present]
                markers[METRIC_NAMES[m]] = [(table2_value(p.name, ds.paper, m)
                                             if p.name == p.model else None)
                                            for p in present]
            grouped_bars(ax, [p.name for p in present], series, errors,
                         markers=markers if ds.paper else None,
                         marker_label="paper's Table 2")
            ax.set_title(ds.label + (' (synthetic)' if ds.synthetic else ''),
                         fontsize=10)
            ax.legend(fontsize=7, ncols=3, loc='upper center')
        title(fig, 'Table 2: test metrics at the best valid epoch', setup.quick)
        return save(fig, setup.output / f'{self.name}.png')


def _in_paper(p: Preset) -> bool:
    return p.name == p.model and p.model in TABLE2


def _protocol_line(setup: Setup, exp: Experiment) -> str:
    t = setup.train_config(setup.seeds[0])
    seeds = ', '.join(map(str, setup.seeds))
    how = ("each model's grid searched at the first seed, the point best on valid "
           f'{t.valid_metric} kept' if setup.search else
           'each model with its default configuration')
    return (f'Protocol: {how}; batch {t.batch_size}, lr {t.lr:g}, at most '
            f'{t.max_epochs} epochs, early stopping on valid {t.valid_metric} '
            f'(patience {t.patience}); test metrics at the best valid epoch; seeds '
            f'{seeds} (mean ± std over seeds where more than one). Every number\'s runs '
            f'and configurations: {exp.name}.json and summary.json.')


# ---------------------------------------------------------------------------------
# Improvement and significance (shared with Table 3 and the ablation)
# ---------------------------------------------------------------------------------
def compare(setup: Setup, collected: Collected, results: Sequence[CellResult],
            label: str, rows: Sequence[Preset], stats, paper_dataset: Optional[str],
            metrics: Sequence[str] = METRICS) -> Dict[str, Any]:
    """Improvement of every MambaRec row over the best baseline (per metric) and
    paired tests against the best baseline by mean test Recall@20."""
    challengers = [p for p in rows if p.model == CHALLENGER]
    baselines = [p for p in rows if p.model != CHALLENGER]
    out: Dict[str, Any] = {'best_baseline': None, 'improvement': {},
                           'significance': {}}
    if not challengers or not baselines:
        return out
    key = 'recall@20'
    best = max(baselines, key=lambda p: stats[(label, p.name)][key].mean)
    out['best_baseline'] = best.name
    for ch in challengers:
        imp = {}
        for m in metrics:
            b = max(baselines, key=lambda p: stats[(label, p.name)][m].mean)
            ours = stats[(label, ch.name)][m].mean
            base = stats[(label, b.name)][m].mean
            entry = {'baseline': b.name, 'percent': _pct(ours, base),
                     'absolute': ours - base}
            if paper_dataset and ch.name == ch.model:
                paper_base = [table2_value(p.name, paper_dataset, m) for p in baselines
                              if p.name == p.model]
                paper_base = [v for v in paper_base if v is not None]
                pv = table2_value(ch.name, paper_dataset, m)
                if paper_base and pv is not None:
                    entry['paper_percent'] = _pct(pv, max(paper_base))
            imp[m] = entry
        out['improvement'][ch.name] = imp
        out['significance'][ch.name] = compare_runs(
            collected, _runs(results, label, ch.name), _runs(results, label, best.name),
            ch.name, best.name, metrics)
    return out


def _runs(results: Sequence[CellResult], label: str, row: str) -> List[CellResult]:
    return [r for r in results if r.ok and r.cell.dataset.label == label and
            r.cell.row == row]


def _pct(ours: float, base: float) -> Optional[float]:
    if base is None or ours is None or not math.isfinite(base) or base == 0:
        return None
    return 100.0 * (ours - base) / base
