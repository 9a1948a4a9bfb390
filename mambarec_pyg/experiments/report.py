"""Tables of experiment results: mean +- std over seeds, best and second best marked,
written as Markdown, CSV and JSON.

Every number keeps the runs it came from (``runs``: directories under the
experiment's output), so ``NAME.json`` and ``summary.json`` together say exactly which
runs and configurations produced it.

Marking (as in the paper's tables): per dataset and metric, the best mean is **bold**
and the second best underlined (``<u>..</u>`` in Markdown; ``best``/``second`` in the
CSV and JSON); ties share the mark.
"""
from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..io import atomic_write_text, write_json
from .runner import CellResult

__all__ = ['Stat', 'aggregate', 'marks', 'fmt', 'fmt_value', 'markdown_table',
           'write_csv', 'write_outputs', 'METRIC_NAMES']

#: short column names.
METRIC_NAMES = {'recall@10': 'R@10', 'recall@20': 'R@20', 'ndcg@10': 'N@10',
                'ndcg@20': 'N@20', 'recall@5': 'R@5', 'recall@50': 'R@50',
                'ndcg@5': 'N@5', 'ndcg@50': 'N@50'}


@dataclass
class Stat:
    """One table entry: a metric over seeds."""

    mean: float
    std: float
    #: the values, one per seed.
    values: List[float]
    #: the runs (directories relative to the output) behind the values.
    runs: List[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    def to_dict(self) -> Dict[str, Any]:
        return {'mean': _num(self.mean), 'std': _num(self.std), 'n': self.n,
                'values': [_num(v) for v in self.values], 'runs': self.runs}


def _num(x: Optional[float]) -> Optional[float]:
    return None if x is None or not math.isfinite(x) else float(x)


def aggregate(results: Iterable[CellResult], group: Sequence[str], metrics: Sequence[str],
              root: Path, split: str = 'test') -> Dict[Tuple, Dict[str, Stat]]:
    """Group the finished cells by ``group`` (attributes ``dataset``, ``row``,
    ``seed`` or label names) and summarise each metric over the group's seeds.

    Returns ``{group key tuple: {metric: Stat}}`` in first-seen order; failed cells
    are left out (a group with none left is absent).
    """
    out: Dict[Tuple, Dict[str, List]] = {}
    for r in results:
        if not r.ok:
            continue
        key = tuple(_attr(r, g) for g in group)
        entry = out.setdefault(key, {'runs': [], 'values': {m: [] for m in metrics}})
        run = _rel(r.directory, root)
        entry['runs'].append(run)
        values = getattr(r, split)
        for m in metrics:
            entry['values'][m].append(float(values.get(m, float('nan'))))
    stats: Dict[Tuple, Dict[str, Stat]] = {}
    for key, entry in out.items():
        stats[key] = {}
        for m in metrics:
            v = entry['values'][m]
            arr = np.asarray(v, dtype=np.float64)
            std = float(arr.std(ddof=1)) if arr.size > 1 else float('nan')
            stats[key][m] = Stat(float(arr.mean()), std, v, list(entry['runs']))
    return stats


def _attr(r: CellResult, name: str) -> Any:
    c = r.cell
    if name == 'dataset':
        return c.dataset.label
    if name == 'row':
        return c.row
    if name == 'seed':
        return c.seed
    return c.labels.get(name)


def _rel(path: Path, root: Path) -> str:
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def marks(values: Dict[Any, float]) -> Dict[Any, Optional[str]]:
    """``'best'`` / ``'second'`` / ``None`` per key (higher is better; ties share;
    NaN never marked)."""
    finite = sorted({round(v, 12) for v in values.values() if v is not None and
                     math.isfinite(v)}, reverse=True)
    out = {}
    for k, v in values.items():
        if v is None or not math.isfinite(v):
            out[k] = None
        elif finite and round(v, 12) == finite[0]:
            out[k] = 'best'
        elif len(finite) > 1 and round(v, 12) == finite[1]:
            out[k] = 'second'
        else:
            out[k] = None
    return out


def fmt(stat: Optional[Stat], digits: int = 4, mark: Optional[str] = None) -> str:
    """``0.1013 ± 0.0012`` (± only with several seeds), bold for ``'best'``,
    underlined for ``'second'``; ``–`` for a missing entry."""
    if stat is None or not math.isfinite(stat.mean):
        return '–'
    text = f'{stat.mean:.{digits}f}'
    if stat.n > 1 and math.isfinite(stat.std):
        text += f' ± {stat.std:.{digits}f}'
    if mark == 'best':
        return f'**{text}**'
    if mark == 'second':
        return f'<u>{text}</u>'
    return text


def fmt_value(x: Optional[float], digits: int = 4) -> str:
    return '–' if x is None or not math.isfinite(x) else f'{x:.{digits}f}'


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                   align: Optional[str] = None) -> str:
    """A GitHub Markdown table; ``align`` one character per column (``l``/``r``),
    default: first left, others right."""
    align = align or ('l' + 'r' * (len(header) - 1))
    sep = ['---:' if a == 'r' else ':---' for a in align]
    lines = ['| ' + ' | '.join(header) + ' |', '| ' + ' | '.join(sep) + ' |']
    lines += ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows]
    return '\n'.join(lines)


def write_csv(path: Path, records: List[Dict[str, Any]]) -> Path:
    """Records (dicts with the same keys) as a CSV file, atomically."""
    buf = io.StringIO()
    if records:
        fields = list(records[0])
        for r in records[1:]:
            fields += [k for k in r if k not in fields]
        w = csv.DictWriter(buf, fieldnames=fields, lineterminator='\n')
        w.writeheader()
        for r in records:
            w.writerow({k: ('' if v is None else (f'{v:.6g}' if isinstance(v, float)
                                                   else v)) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def write_outputs(output: Path, name: str, markdown: str,
                  records: List[Dict[str, Any]], table: Dict[str, Any]) -> Dict[str, str]:
    """``NAME.md``, ``NAME.csv`` and ``NAME.json`` in ``output``; returns their paths."""
    output = Path(output)
    atomic_write_text(output / f'{name}.md', markdown.rstrip() + '\n')
    write_csv(output / f'{name}.csv', records)
    write_json(output / f'{name}.json', table)
    return {'markdown': str(output / f'{name}.md'), 'csv': str(output / f'{name}.csv'),
            'json': str(output / f'{name}.json')}
