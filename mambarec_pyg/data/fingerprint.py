r"""The data fingerprint: what a checkpoint records about the data it was trained on.

``evaluate``, ``recommend`` and ``--resume`` rebuild a run from its checkpoint and load
the data again from where the run found them. If those files have changed since
(interactions added, a split redrawn, features recomputed), the metrics and the
recommendations would silently describe another dataset. :func:`data_fingerprint`
summarises the data in a few plain values that every checkpoint records, and
:func:`fingerprint_changes` names what differs between two of them:

* ``num_users``, ``num_items``;
* ``splits``: for ``train`` (``edge_index``), ``valid`` and ``test``
  (``*_edge_label_index``), the number of interactions and the sha256 of the sorted
  int64 keys :math:`u \cdot N + i` of the (user, item) pairs -- the order of the rows
  in the ``.inter`` file does not matter; any interaction added, removed or moved to
  another split does;
* ``features``: per modality, in ``data.modalities`` order, the table's shape and the
  sha256 of its dtype, shape and bytes (:func:`~mambarec_pyg.data.transforms.content_hash`,
  the hash that also keys the cached kNN graphs).

Cost: one sort of each split's keys and one sha256 pass over the feature bytes (the
Baby features are about 120 MB), memoised per tensor while it is unchanged -- a model
whose kNN graphs were cached has already computed the feature hashes. Nothing but
numbers and hex digests is stored, so the fingerprint reveals nothing of the data.
"""
from __future__ import annotations

import hashlib
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import Tensor

from ..utils import cached_on, tensor_fingerprint
from .errors import DataWarning
from .index import UI
from .transforms import content_hash

__all__ = ['data_fingerprint', 'fingerprint_changes', 'DataChangedWarning',
           'FINGERPRINT_VERSION', 'SPLIT_KEYS']

#: The scheme of :func:`data_fingerprint`; fingerprints of other versions are not
#: compared.
FINGERPRINT_VERSION = 1
#: The edge attribute of each split on ``data['user', 'interacts', 'item']``.
SPLIT_KEYS = {'train': 'edge_index', 'valid': 'valid_edge_label_index',
              'test': 'test_edge_label_index'}


class DataChangedWarning(DataWarning):
    """A checkpoint is used on data other than those it was trained on (allowed with
    ``--allow-changed-data``), or its data cannot be checked (it records no
    fingerprint)."""


def _pairs_sha256(edge_index: Tensor, num_items: int) -> str:
    def build() -> str:
        ei = edge_index.detach().to('cpu', torch.long)
        keys = torch.sort(ei[0] * num_items + ei[1]).values.contiguous()
        h = hashlib.sha256(b'pairs|int64|')
        h.update(memoryview(keys.numpy()))
        return h.hexdigest()
    return cached_on(edge_index, ('pairs_sha256', int(num_items)), build,
                     tensor_fingerprint(edge_index))


def data_fingerprint(data) -> Dict[str, Any]:
    """The fingerprint of ``data`` (a :class:`~torch_geometric.data.HeteroData` in the
    layout of :func:`~mambarec_pyg.data.load_mmrec`); see the module doc.

    Returns a dictionary of plain values (JSON- and ``weights_only``-safe).
    """
    num_users, num_items = int(data['user'].num_nodes), int(data['item'].num_nodes)
    store = data[UI]
    splits = {}
    for split, key in SPLIT_KEYS.items():
        edges = store[key] if key in store else None
        if edges is None:
            edges = torch.empty(2, 0, dtype=torch.long)
        splits[split] = {'count': int(edges.size(1)),
                         'sha256': _pairs_sha256(edges, num_items)}
    features = {}
    for m in tuple(getattr(data, 'modalities', None) or ()):
        x = data['item'][m]
        features[m] = {'shape': [int(s) for s in x.shape], 'sha256': content_hash(x)}
    return {'version': FINGERPRINT_VERSION, 'num_users': num_users,
            'num_items': num_items, 'splits': splits, 'features': features}


def _shape(shape) -> str:
    return '[' + ', '.join(str(s) for s in shape) + ']'


def fingerprint_changes(old: Mapping[str, Any], new: Mapping[str, Any],
                        then: str = 'in the checkpoint') -> Optional[List[str]]:
    """What differs between the fingerprints ``old`` (recorded) and ``new`` (now), one
    phrase each (``'test interactions: 1200 in the checkpoint, 1234 now'``); ``[]``
    when they agree, ``None`` when they cannot be compared (another scheme version).
    """
    if old.get('version') != new.get('version'):
        return None
    out = []
    for key, name in (('num_users', 'users'), ('num_items', 'items')):
        if old.get(key) != new.get(key):
            out.append(f'{name}: {old.get(key)} {then}, {new.get(key)} now')
    old_splits, new_splits = old.get('splits') or {}, new.get('splits') or {}
    for split in SPLIT_KEYS:
        a, b = old_splits.get(split) or {}, new_splits.get(split) or {}
        if a.get('count') != b.get('count'):
            out.append(f'{split} interactions: {a.get("count")} {then}, '
                       f'{b.get("count")} now')
        elif a.get('sha256') != b.get('sha256'):
            out.append(f'{split} interactions: as many ({b.get("count")}) but not the '
                       f'same (user, item) pairs')
    old_feat, new_feat = old.get('features') or {}, new.get('features') or {}
    if list(old_feat) != list(new_feat):
        out.append(f'modalities: {", ".join(old_feat) or "none"} {then}, '
                   f'{", ".join(new_feat) or "none"} now')
    for m in old_feat:
        if m not in new_feat:
            continue
        a, b = old_feat[m], new_feat[m]
        if list(a.get('shape') or []) != list(b.get('shape') or []):
            out.append(f'{m} features: shape {_shape(a.get("shape") or [])} {then}, '
                       f'{_shape(b.get("shape") or [])} now')
        elif a.get('sha256') != b.get('sha256'):
            out.append(f'{m} features: the same shape {_shape(b.get("shape") or [])} '
                       f'but other values')
    return out
