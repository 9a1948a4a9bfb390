"""Experiments that vary MambaRec's settings: the shared planning and table.

A sweep runs every row (default: ``mambarec``, the released configuration; any
MambaRec preset with ``--models``) under every :class:`Setting` -- a named set of
option overrides -- on every dataset and seed. Table 3 (modalities), Figure 3
(alignment ablation), Figures 4-5 (sensitivity) and Figure 6 (reduction factor) are
sweeps.

:func:`settings_table` is the report of Table 3 and the ablation: one Markdown table
per dataset with a line per row and setting, best and second best marked, the
paper's values where it has them, and paired tests of the reference setting (e.g.
both modalities, the full model) against each other setting.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..config import ConfigError
from .compare import compare_runs, significance_section
from .paper import METRICS
from .presets import Preset, resolve_row
from .report import METRIC_NAMES, aggregate, fmt, fmt_value, markdown_table, marks
from .runner import Cell, CellResult, Collected, Experiment, Setup

__all__ = ['Setting', 'SweepExperiment', 'settings_table', 'settings_bars',
           'number_key']


def number_key(x: Any) -> str:
    """A value as it appears in directory names (``0.0001`` -> ``0.0001``,
    ``8`` -> ``8``)."""
    return f'{x:g}' if isinstance(x, float) else str(x)


@dataclass
class Setting:
    """One configuration of a sweep, applied on top of each row's."""

    #: directory-safe name.
    key: str
    #: name in tables and figures.
    label: str
    #: dotted option overrides (``model.X``, ``data.X``, ``train.X``).
    overrides: Dict[str, Any] = field(default_factory=dict)
    #: values to group by in the report (e.g. ``{'cl_weight': 0.01}``).
    labels: Dict[str, Any] = field(default_factory=dict)


class SweepExperiment(Experiment):
    """Rows x settings x datasets x seeds; subclasses give :meth:`settings`."""

    #: rows when ``--models`` is not given.
    default_rows: Sequence[str] = ('mambarec', )

    def settings(self, setup: Setup) -> List[Setting]:
        raise NotImplementedError

    def rows(self, setup: Setup) -> List[Preset]:
        rows = [resolve_row(n) for n in dict.fromkeys(setup.models or
                                                        self.default_rows)]
        probe = setup.base_config(setup.datasets[0], setup.seeds[0])
        for p in rows:
            for s in self.settings(setup):
                try:
                    p.apply(probe).with_overrides(s.overrides)
                except ConfigError as e:
                    raise ConfigError(f'{self.name}: row {p.name!r} cannot take the '
                                      f'setting {s.label!r} ({e}); this experiment '
                                      f'varies options of MambaRec, so give MambaRec '
                                      f'rows (mambarec or one of its presets)') from None
        return rows

    def plan(self, setup: Setup) -> List[Cell]:
        cells = []
        settings = self.settings(setup)
        for ds in setup.datasets:
            for p in self.rows(setup):
                for s in settings:
                    for seed in setup.seeds:
                        cfg = p.apply(setup.base_config(ds, seed)).with_overrides(
                            s.overrides)
                        cells.append(Cell(f'{ds.label}/{p.name}/{s.key}/seed-{seed}',
                                          ds, p.name, seed, cfg,
                                          {'model': p.model, 'setting': s.label,
                                           **s.labels}))
        return cells


def settings_table(setup: Setup, collected: Collected, results: Sequence[CellResult],
                   rows: Sequence[Preset], settings: Sequence[Setting],
                   reference: str,
                   paper: Callable[[Preset, Setting, Optional[str], str],
                                   Optional[float]],
                   metrics: Sequence[str] = METRICS, paper_label: str = 'paper',
                   ) -> Tuple[List[str], List[Dict[str, Any]], Dict[str, Any], Dict]:
    """``(markdown lines, CSV records, JSON, stats)`` for a table of rows x settings
    (see the module docstring); ``reference`` is the label of the setting the others
    are tested against; ``paper(row, setting, paper_dataset, metric)`` gives the
    paper's value or ``None``."""
    stats = aggregate(results, ('dataset', 'row', 'setting'), metrics, setup.output)
    md: List[str] = []
    records: List[Dict[str, Any]] = []
    out: Dict[str, Any] = {}
    for ds in setup.datasets:
        label = ds.label
        entries = [(p, s) for p in rows for s in settings]
        present = [(p, s) for p, s in entries if (label, p.name, s.label) in stats]
        mk = {m: marks({(p.name, s.label): stats[(label, p.name, s.label)][m].mean
                        for p, s in present}) for m in metrics}
        show_paper = any(paper(p, s, ds.paper, m) is not None for p, s in entries
                         for m in metrics)
        header = ['model', 'setting'] + [METRIC_NAMES.get(m, m) for m in metrics]
        if show_paper:
            header += [f'{paper_label} {METRIC_NAMES.get(m, m)}' for m in metrics]
        body = []
        ds_json: Dict[str, Any] = {'paper_dataset': ds.paper, 'synthetic': ds.synthetic,
                                   'entries': [], 'significance': {}}
        for p, s in entries:
            st = stats.get((label, p.name, s.label))
            pv = {m: paper(p, s, ds.paper, m) for m in metrics}
            line = [p.name, s.label] + [fmt(st[m] if st else None,
                                            mark=mk[m].get((p.name, s.label)))
                                        for m in metrics]
            if show_paper:
                line += [fmt_value(pv[m]) for m in metrics]
            body.append(line)
            ds_json['entries'].append({
                'row': p.name, 'model': p.model, 'setting': s.label,
                'overrides': s.overrides,
                'metrics': {m: ({**st[m].to_dict(), 'mark': mk[m].get((p.name, s.label)),
                                 'paper': pv[m]} if st else None) for m in metrics}})
            for m in metrics:
                records.append({'dataset': label, 'row': p.name, 'setting': s.label,
                                'metric': m, 'mean': st[m].mean if st else None,
                                'std': st[m].std if st and st[m].n > 1 else None,
                                'n': st[m].n if st else 0,
                                'mark': mk[m].get((p.name, s.label)) or '',
                                'paper': pv[m],
                                'runs': ';'.join(st[m].runs) if st else ''})
        md += [f'## {label}' + (f" (the paper's {ds.paper})" if ds.paper else ''), '',
               markdown_table(header, body, 'll' + 'r' * (len(header) - 2)), '']
        for p in rows:
            ref = _runs(results, label, p.name, reference)
            for s in settings:
                if s.label == reference:
                    continue
                cmp = compare_runs(collected, ref, _runs(results, label, p.name, s.label),
                                   f'{p.name} ({reference})', f'{p.name} ({s.label})',
                                   metrics)
                ds_json['significance'][f'{p.name}: {reference} vs {s.label}'] = cmp
        md += significance_section(ds_json['significance'])
        out[label] = ds_json
    return md, records, out, stats


def _runs(results, label: str, row: str, setting: str) -> List[CellResult]:
    return [r for r in results if r.cell.dataset.label == label and r.cell.row == row
            and r.cell.labels.get('setting') == setting]


def settings_bars(setup: Setup, rows: Sequence[Preset], settings: Sequence[Setting],
                  stats, metrics: Sequence[str], path, title: str,
                  paper: Optional[Callable] = None, paper_label: str = 'paper') -> str:
    """A bar chart per dataset: one group per row and setting, one bar per metric
    (error bars: std over seeds; black ticks: the paper's values); one legend for
    all panels, in a row below them."""
    from .plots import grouped_bars, new_figure, save, shared_legend
    from .plots import title as set_title
    groups = [(p, s) for p in rows for s in settings]
    names = [s.label if len(rows) == 1 else f'{p.name}: {s.label}' for p, s in groups]
    fig, axes = new_figure(1, len(setup.datasets),
                           panel=(max(3.8, 0.9 * len(groups) + 1.2), 3.3))
    for ax, ds in zip(axes[0], setup.datasets):
        series, errors, markers = {}, {}, {}
        for m in metrics:
            name = METRIC_NAMES.get(m, m)
            st = [stats.get((ds.label, p.name, s.label)) for p, s in groups]
            series[name] = [x[m].mean if x else float('nan') for x in st]
            errors[name] = [x[m].std if x else float('nan') for x in st]
            if paper is not None:
                markers[name] = [paper(p, s, ds.paper, m) for p, s in groups]
        has_paper = any(v is not None for vs in markers.values() for v in vs)
        grouped_bars(ax, names, series, errors,
                     markers=markers if has_paper else None, marker_label=paper_label,
                     ylabel='test metric (mean over seeds)')
        ax.set_title(ds.label + (' (synthetic)' if ds.synthetic else ''), fontsize=10)
    shared_legend(fig, axes[0])
    set_title(fig, title, setup.quick)
    return save(fig, path)
