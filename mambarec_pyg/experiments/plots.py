"""Figures: shared drawing helpers and the training curves of ``mambarec plot``.

Drawing uses matplotlib's object-oriented API on the Agg canvas
(:class:`matplotlib.figure.Figure`, never :mod:`matplotlib.pyplot`), so it needs no
display and leaves the backend of an interactive session alone. matplotlib (and
scikit-learn for t-SNE) come with the ``viz`` extra; without them
:func:`require` raises :class:`MissingDependency` naming
``pip install 'mambarec-pyg[viz]'``.

:func:`plot_runs` draws, for one or several run directories (``results.json``'s
per-epoch history), every loss part and the chosen valid metrics against the epoch,
the runs overlaid, the best valid epoch of each marked.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ['MissingDependency', 'require', 'new_figure', 'save', 'grouped_bars',
           'shared_legend', 'plot_runs', 'find_runs', 'VIZ_HINT']

PathLike = Union[str, os.PathLike]

#: how to install the plotting dependencies.
VIZ_HINT = "pip install 'mambarec-pyg[viz]'"

#: resolution of the PNGs written (dots per inch).
DPI = 110
#: the colours of the datasets (the paper: Baby red, Sports blue).
DATASET_COLORS = {'baby': '#d62728', 'sports': '#1f77b4', 'clothing': '#2ca02c'}
_CYCLE = ('#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2',
          '#7f7f7f', '#bcbd22', '#17becf')


class MissingDependency(ImportError):
    """matplotlib or scikit-learn is not installed."""


def require(sklearn: bool = False, matplotlib: bool = True) -> None:
    """Raise :class:`MissingDependency` unless matplotlib (and, with ``sklearn``,
    scikit-learn) can be imported."""
    missing = []
    if matplotlib:
        try:
            import matplotlib as _mpl  # noqa: F401
        except ImportError:
            missing.append('matplotlib')
    if sklearn:
        try:
            import sklearn as _sk  # noqa: F401
        except ImportError:
            missing.append('scikit-learn')
    if missing:
        skip = (' (or skip the figures with --no-figures)'
                if missing == ['matplotlib'] else '')
        raise MissingDependency(
            f'{" and ".join(missing)} {"is" if len(missing) == 1 else "are"} not '
            f'installed; {"t-SNE and " if "scikit-learn" in missing else ""}the '
            f'figures need {"it" if len(missing) == 1 else "them"}: {VIZ_HINT}{skip}')


def color(i: int) -> str:
    return _CYCLE[i % len(_CYCLE)]


def dataset_color(label: str, i: int) -> str:
    for name, c in DATASET_COLORS.items():
        if name in label.lower():
            return c
    return color(i)


def new_figure(nrows: int = 1, ncols: int = 1, panel: Tuple[float, float] = (4.0, 3.0),
               squeeze: bool = False):
    """``(figure, axes[nrows, ncols])`` on the Agg canvas."""
    require()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=(panel[0] * ncols, panel[1] * nrows), layout='constrained')
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=squeeze)
    return fig, axes


def title(fig, text: str, quick: bool = False) -> None:
    """The figure's title; a quick run says so on a second line."""
    fig.suptitle(text + ('\n(quick run: not comparable with the paper)' if quick
                         else ''), fontsize=10)


def save(fig, path: PathLike, dpi: Optional[int] = None) -> str:
    """Write ``fig`` as PNG (at :data:`DPI` unless ``dpi``), atomically; returns the
    path."""
    from ..io import atomic_path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi or DPI, format='png')
    return str(path)


def grouped_bars(ax, groups: Sequence[str], series: Dict[str, Sequence[float]],
                 errors: Optional[Dict[str, Sequence[float]]] = None,
                 colors: Optional[Sequence[str]] = None, ylabel: str = '',
                 markers: Optional[Dict[str, Sequence[Optional[float]]]] = None,
                 marker_label: str = 'paper') -> None:
    """Bars of several series per group (NaN bars left out); ``markers`` draws one
    black tick per bar (e.g. the paper's value)."""
    n = max(len(series), 1)
    width = 0.8 / n
    x = np.arange(len(groups))
    labelled = False
    for j, (name, values) in enumerate(series.items()):
        pos = x - 0.4 + width * (j + 0.5)
        vals = np.asarray([np.nan if v is None else v for v in values], dtype=float)
        err = None
        if errors and name in errors:
            err = np.asarray([0 if (e is None or not math.isfinite(e)) else e
                              for e in errors[name]], dtype=float)
            if not err.any():
                err = None
        ax.bar(pos, np.nan_to_num(vals), width, yerr=err, capsize=2, label=name,
               color=(colors[j] if colors else color(j)), alpha=0.9)
        if markers and name in markers:
            mk = np.asarray([np.nan if v is None else v for v in markers[name]],
                            dtype=float)
            ok = np.isfinite(mk)
            if ok.any():
                ax.scatter(pos[ok], mk[ok], marker='_', s=200, color='black',
                           zorder=3, label=None if labelled else marker_label)
                labelled = True
    top = max([float(np.nanmax(np.asarray(v, dtype=float))) for v in series.values()
               if np.isfinite(np.asarray(v, dtype=float)).any()] or [1.0])
    ax.set_ylim(0, top * 1.22)  # room for the legend
    ax.set_xticks(x)
    ax.set_xticklabels(groups, rotation=30 if max(map(len, groups), default=0) > 6
                       else 0, ha='right' if max(map(len, groups), default=0) > 6
                       else 'center')
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(axis='y', alpha=0.3)


def shared_legend(fig, axes) -> None:
    """One legend for every panel of ``axes``, in a single row below them (outside
    the panels, so it never covers a bar); entries named alike are shown once."""
    entries: Dict[str, object] = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if label and not label.startswith('_'):
                entries.setdefault(label, handle)
    if entries:
        fig.legend(list(entries.values()), list(entries), loc='outside lower center',
                   ncols=len(entries), fontsize=8, frameon=False)


# ---------------------------------------------------------------------------------
# Training curves
# ---------------------------------------------------------------------------------
def find_runs(paths: Sequence[PathLike]) -> List[Path]:
    """Run directories (holding ``results.json``) among ``paths``; a directory without
    one stands for every run below it (e.g. an experiment's output)."""
    runs: List[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_file() and p.name == 'results.json':
            p = p.parent
        if (p / 'results.json').is_file():
            runs.append(p)
        elif p.is_dir():
            found = sorted(q.parent for q in p.rglob('results.json'))
            if not found:
                raise FileNotFoundError(f'{p}: no results.json in it or below it')
            runs.extend(found)
        else:
            raise FileNotFoundError(f'{p}: not a run directory (no results.json)')
    return list(dict.fromkeys(runs))


def _labels(runs: Sequence[Path]) -> List[str]:
    """Short distinct names: the paths relative to their common parent."""
    if len(runs) == 1:
        return [runs[0].name]
    parts = [r.resolve().parts for r in runs]
    common = 0
    while all(len(p) > common + 1 for p in parts) and \
            len({p[common] for p in parts}) == 1:
        common += 1
    return ['/'.join(p[common:]) for p in parts]


def plot_runs(runs: Sequence[PathLike], output: PathLike,
              metrics: Sequence[str] = ('recall@20', 'ndcg@20'),
              log_loss: bool = False, labels: Optional[Sequence[str]] = None) -> str:
    """Loss parts and valid metrics per epoch of ``runs`` (see :func:`find_runs`),
    overlaid, as one PNG at ``output``; returns its path."""
    dirs = find_runs(runs)
    histories = []
    for d in dirs:
        try:
            saved = json.loads((d / 'results.json').read_text())
        except ValueError as e:
            raise ValueError(f'{d / "results.json"}: not valid JSON ({e})') from None
        histories.append((saved.get('history') or [], saved.get('best_epoch', -1),
                          saved.get('model', '')))
    names = list(labels) if labels else _labels(dirs)
    if len(names) != len(dirs):
        raise ValueError(f'{len(names)} labels for {len(dirs)} runs')
    parts: List[str] = []
    for history, _, _ in histories:
        for rec in history:
            parts += [k for k in (rec.get('loss') or {}) if k not in parts]
    if 'total' in parts:
        parts.remove('total')
        parts.insert(0, 'total')
    panels = [('loss', p) for p in parts] + [('valid', m) for m in metrics]
    ncols = min(3, len(panels)) or 1
    nrows = max(1, math.ceil(len(panels) / ncols))
    fig, axes = new_figure(nrows, ncols, panel=(4.2, 3.0))
    flat = list(axes.ravel())
    for ax, (kind, name) in zip(flat, panels):
        for j, ((history, best, _), label) in enumerate(zip(histories, names)):
            xs, ys = [], []
            for rec in history:
                v = (rec.get('loss') or {}).get(name) if kind == 'loss' else \
                    (rec.get('valid') or {}).get(name)
                if v is not None and isinstance(v, (int, float)):
                    xs.append(rec.get('epoch', len(xs)))
                    ys.append(v)
            if not xs:
                continue
            ax.plot(xs, ys, color=color(j), label=label, marker='.' if len(xs) < 30
                    else None, linewidth=1.2)
            if kind == 'valid' and best in xs:
                ax.scatter([best], [ys[xs.index(best)]], color=color(j), s=50,
                           edgecolor='black', zorder=3)
        from matplotlib.ticker import MaxNLocator
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title(f'{"loss: " if kind == "loss" else "valid "}{name}', fontsize=10)
        ax.set_xlabel('epoch')
        if kind == 'loss' and log_loss:
            ax.set_yscale('log')
        ax.grid(alpha=0.3)
    for ax in flat[len(panels):]:
        ax.set_visible(False)
    if flat:
        handles, labs = flat[0].get_legend_handles_labels()
        if not handles and len(flat) > 1:
            handles, labs = flat[-1 if len(panels) >= len(flat) else
                                 len(panels) - 1].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labs, loc='outside lower center',
                       ncols=min(4, len(handles)), fontsize=8)
    fig.suptitle('training curves (dot: best valid epoch)', fontsize=11)
    return save(fig, output)
