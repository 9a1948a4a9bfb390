"""A dataset summary in the shape of the paper's Table 1.

The paper describes each dataset by its numbers of users, items and interactions and
its density, ``interactions / (users * items)`` shown as a percentage with three
decimals (Baby: 19,445 users, 7,050 items, 160,792 interactions, 0.117%).
:func:`summarize` computes those from a loaded :class:`HeteroData`, together with the
size of each split and the dimension of each item modality.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple

from torch_geometric.data import HeteroData

from .mmrec import UI


@dataclass(frozen=True)
class DatasetSummary:
    """The numbers of Table 1 plus per-split and per-modality details."""

    name: str
    num_users: int
    num_items: int
    #: interactions over all splits (after the loader's clean-up).
    num_interactions: int
    #: interactions per split: ``{'train': ..., 'valid': ..., 'test': ...}``.
    split_interactions: Dict[str, int] = field(default_factory=dict)
    #: users with at least one interaction per split.
    split_users: Dict[str, int] = field(default_factory=dict)
    #: feature dimension per modality, in ``data.modalities`` order.
    modality_dims: Tuple[Tuple[str, int], ...] = ()
    #: users left out of valid / test for lack of a training interaction.
    dropped_eval_users: Dict[str, int] = field(default_factory=dict)

    @property
    def density(self) -> float:
        """``interactions / (users * items)`` as a fraction."""
        cells = self.num_users * self.num_items
        return self.num_interactions / cells if cells else 0.0

    @property
    def density_percent(self) -> str:
        """The density as the paper prints it, e.g. ``'0.117%'``."""
        return f'{100.0 * self.density:.3f}%'

    def as_dict(self) -> dict:
        return {
            'name': self.name, 'users': self.num_users, 'items': self.num_items,
            'interactions': self.num_interactions, 'density': self.density_percent,
            'splits': dict(self.split_interactions),
            'split_users': dict(self.split_users),
            'modalities': dict(self.modality_dims),
            'dropped_eval_users': dict(self.dropped_eval_users),
        }

    def __str__(self) -> str:
        rows = [('Dataset', '#Users', '#Items', '#Interactions', 'Density'),
                (self.name, f'{self.num_users:,}', f'{self.num_items:,}',
                 f'{self.num_interactions:,}', self.density_percent)]
        lines = _table(rows, right=(1, 2, 3, 4))
        split_rows = [('Split', '#Interactions', '#Users')]
        for split, count in self.split_interactions.items():
            split_rows.append((split, f'{count:,}',
                               f'{self.split_users.get(split, 0):,}'))
        lines += [''] + _table(split_rows, right=(1, 2))
        if self.modality_dims:
            lines += [''] + _table([('Modality', 'Dim')] + [
                (m, str(d)) for m, d in self.modality_dims], right=(1, ))
        dropped = {k: v for k, v in self.dropped_eval_users.items() if v}
        if dropped:
            lines += ['', 'Users without training interactions left out: ' + ', '.join(
                f'{v:,} from {k}' for k, v in dropped.items())]
        return '\n'.join(lines)


def summarize(data: HeteroData) -> DatasetSummary:
    """Summarise a dataset from :func:`~mambarec_pyg.data.load_mmrec` or
    :func:`~mambarec_pyg.data.make_synthetic`."""
    store = data[UI]
    splits = {'train': store.edge_index}
    for split in ('valid', 'test'):
        key = f'{split}_edge_label_index'
        if key in store:
            splits[split] = store[key]
    split_interactions = {k: int(v.size(1)) for k, v in splits.items()}
    split_users = {k: int(v[0].unique().numel()) for k, v in splits.items()}
    modalities = tuple(getattr(data, 'modalities', None) or ())
    dims = tuple((m, int(data['item'][m].size(-1))) for m in modalities)
    dropped = getattr(data, 'num_dropped_eval_users', None) or {}
    return DatasetSummary(
        name=str(getattr(data, 'name', None) or 'dataset'),
        num_users=int(data['user'].num_nodes),
        num_items=int(data['item'].num_nodes),
        num_interactions=sum(split_interactions.values()),
        split_interactions=split_interactions,
        split_users=split_users,
        modality_dims=dims,
        dropped_eval_users=dict(dropped),
    )


def _table(rows, right=()) -> list:
    widths = [max(len(r[c]) for r in rows) for c in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [r[c].rjust(widths[c]) if c in right else r[c].ljust(widths[c])
                 for c in range(len(r))]
        out.append('  '.join(cells).rstrip())
    return out
