r"""Full-ranking evaluation under the MMRec protocol (docs/reference.md §1).

For every user with at least one interaction in the evaluated split, all :math:`N`
items are scored by the dot product of the final embeddings, the user's **training**
items are masked (when testing, validation items are *not* masked), the top
:math:`\max K` items are taken once, and at every :math:`K`:

.. math::
    \mathrm{Recall@K} = \frac{|\mathrm{top}_K \cap G_u|}{|G_u|}, \quad
    \mathrm{Precision@K} = \frac{|\mathrm{top}_K \cap G_u|}{K},

.. math::
    \mathrm{NDCG@K} = \frac{\sum_{r \le K} \mathrm{rel}_r / \log_2(r + 1)}
                           {\sum_{r \le \min(|G_u|, K)} 1 / \log_2(r + 1)}, \quad
    \mathrm{MAP@K} = \frac{\sum_{r \le K} \mathrm{P@r} \cdot \mathrm{rel}_r}
                          {\min(|G_u|, K)},

averaged over the evaluated users. These are exactly PyG's
:class:`~torch_geometric.metrics.LinkPredRecall`, :class:`~.LinkPredNDCG`,
:class:`~.LinkPredPrecision` and :class:`~.LinkPredMAP`, which are used here.

Unlike the released code, which recomputes the whole forward pass for every batch of
users, the embeddings are computed once per evaluation (docs/reference.md §7), and
everything that depends only on the data (the evaluated users, their training items
and ground truth, as flat per-batch slices) is built once per split by
:class:`Evaluator` and reused.
"""
from __future__ import annotations

import weakref
from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.metrics import (LinkPredMAP, LinkPredMetricCollection,
                                     LinkPredNDCG, LinkPredPrecision,
                                     LinkPredRecall)

from ..config import ConfigError
from ..data.mmrec import UI
from ..ranking import ItemLists, rank_items

__all__ = ['Evaluator', 'evaluate', 'recommend', 'Popularity', 'METRICS',
           'resolve_device']

#: metric names, in the order they are reported.
METRICS = ('recall', 'ndcg', 'precision', 'map')
_METRIC_CLS = {'recall': LinkPredRecall, 'ndcg': LinkPredNDCG,
               'precision': LinkPredPrecision, 'map': LinkPredMAP}
SPLITS = ('valid', 'test')


def resolve_device(device: Union[str, torch.device, None]) -> torch.device:
    """``'auto'``/``None`` -> CUDA when present, else CPU."""
    if device is None or str(device) == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    try:
        device = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"device: expected 'auto', 'cpu', 'cuda' or 'cuda:N', got "
                          f"{device!r}") from None
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise ConfigError(f"device {str(device)!r} requested but CUDA is not "
                          f"available; use 'cpu' or 'auto'")
    return device


def interactive() -> bool:
    """Whether progress bars have a viewer: a terminal on stderr, or a notebook."""
    import sys
    isatty = getattr(sys.stderr, 'isatty', None)
    return bool(isatty and isatty()) or 'ipykernel' in sys.modules


def _model_device(model: torch.nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device('cpu')


class _Split:
    """What one split's evaluation needs, computed once."""

    def __init__(self, users: Tensor, train: ItemLists, truth: ItemLists) -> None:
        self.users = users
        self.train = train
        self.truth = truth


class Evaluator:
    r"""Evaluates a model (or given embeddings) on the valid or test split.

    Args:
        data (HeteroData): the dataset (layout of :func:`mambarec_pyg.load_mmrec`).
        ks (sequence of int): the cut-offs :math:`K` (default ``(5, 10, 20, 50)``).
        batch_size (int): users scored per batch.
        device: where scores are computed; ``None`` = the model's device.

    Example::

        evaluator = Evaluator(data)
        metrics = evaluator(model, 'valid')          # {'recall@20': ..., ...}
        metrics = evaluator.from_embeddings(u, i, 'test')
    """

    def __init__(self, data: HeteroData, ks: Sequence[int] = (5, 10, 20, 50),
                 batch_size: int = 4096,
                 device: Union[str, torch.device, None] = None) -> None:
        ks = tuple(int(k) for k in ks)
        if not ks or any(k <= 0 for k in ks):
            raise ValueError(f'ks: expected positive integers, got {ks!r}')
        if batch_size <= 0:
            raise ValueError(f'batch_size: expected a positive integer, got '
                             f'{batch_size!r}')
        self.ks = ks
        self.batch_size = int(batch_size)
        self.device = None if device is None else resolve_device(device)
        self.num_users = int(data['user'].num_nodes)
        self.num_items = int(data['item'].num_nodes)
        store = data[UI]
        train = store.edge_index.detach().to('cpu', torch.long)
        self._train_edge_index = train
        self._splits: Dict[str, _Split] = {}
        self._split_edges: Dict[str, Tensor] = {}
        for split in SPLITS:
            key = f'{split}_edge_label_index'
            if key in store:
                self._split_edges[split] = store[key].detach().to('cpu', torch.long)
        self._on: Dict[Tuple[str, torch.device], _Split] = {}
        self._metrics: Dict[torch.device, LinkPredMetricCollection] = {}
        self._train_lists: Dict[torch.device, ItemLists] = {}

    # -- precomputation ---------------------------------------------------------
    def _split(self, split: str, device: torch.device) -> _Split:
        cached = self._on.get((split, device))
        if cached is not None:
            return cached
        if split not in self._split_edges:
            raise KeyError(f"split {split!r}: the data has no "
                           f"'{split}_edge_label_index' (choose from "
                           f"{', '.join(self._split_edges)})")
        base = self._splits.get(split)
        if base is None:
            gt = self._split_edges[split]
            users = torch.unique(gt[0])
            local = torch.full((self.num_users, ), -1, dtype=torch.long)
            local[users] = torch.arange(users.numel())
            truth = ItemLists(local[gt[0]], gt[1], users.numel())
            tr = self._train_edge_index
            keep = local[tr[0]] >= 0
            train = ItemLists(local[tr[0, keep]], tr[1, keep], users.numel())
            base = _Split(users, train, truth)
            self._splits[split] = base
        on = _Split(base.users.to(device), base.train.to(device),
                    base.truth.to(device))
        self._on[(split, device)] = on
        return on

    def _collection(self, device: torch.device) -> LinkPredMetricCollection:
        coll = self._metrics.get(device)
        if coll is None:
            coll = LinkPredMetricCollection({
                f'{name}@{k}': _METRIC_CLS[name](k)
                for name in METRICS for k in self.ks
            }).to(device)
            self._metrics[device] = coll
        return coll

    # -- evaluation -------------------------------------------------------------
    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, split: str = 'valid',
                 data: Optional[HeteroData] = None,
                 progress: bool = False) -> Dict[str, float]:
        """Metrics of ``model`` on ``split``; the forward pass runs once.

        ``model(data)`` must return ``(user_emb [U, d], item_emb [N, d])``; the model
        is put in eval mode for the call and its previous mode restored.
        ``progress`` shows a progress bar over the user batches.
        """
        was_training = model.training
        model.eval()
        try:
            user_emb, item_emb = model(data) if data is not None else model()
        finally:
            model.train(was_training)
        return self.from_embeddings(user_emb, item_emb, split, progress)

    @torch.no_grad()
    def from_embeddings(self, user_emb: Tensor, item_emb: Tensor,
                        split: str = 'valid',
                        progress: bool = False) -> Dict[str, float]:
        """Metrics of the scores ``user_emb @ item_emb.T`` on ``split``."""
        device = self.device or user_emb.device
        user_emb, item_emb = user_emb.to(device), item_emb.to(device)
        self._check_shapes(user_emb, item_emb)
        sp = self._split(split, device)
        coll = self._collection(device)
        coll.reset()
        n = sp.users.numel()
        k = min(max(self.ks), self.num_items)
        item_t = item_emb.t().contiguous()
        starts = range(0, n, self.batch_size)
        if progress and interactive():
            from tqdm.auto import tqdm
            starts = tqdm(starts, desc=f'evaluating {split}', unit='batch',
                          leave=False)
        for start in starts:
            end = min(start + self.batch_size, n)
            scores = user_emb[sp.users[start:end]] @ item_t
            rows, cols = sp.train.slice(start, end)
            scores[rows, cols] = float('-inf')
            top = scores.topk(k, dim=1).indices
            g_rows, g_cols = sp.truth.slice(start, end)
            coll.update(top, torch.stack([g_rows, g_cols]))
        out = {name: float(v) for name, v in coll.compute().items()}
        # report metric by metric, each at every K
        result = {f'{m}@{k}': out[f'{m}@{k}'] for m in METRICS for k in self.ks}
        result['num_users'] = n
        return result

    @torch.no_grad()
    def rank(self, user_emb: Tensor, item_emb: Tensor, users: Tensor,
             k: int) -> Tuple[Tensor, Tensor]:
        """Top-``k`` items and scores for ``users``, training items excluded."""
        device = self.device or user_emb.device
        exclude = self._train_lists.get(device)
        if exclude is None:
            tr = self._train_edge_index
            exclude = ItemLists(tr[0], tr[1], self.num_users).to(device)
            self._train_lists[device] = exclude
        return rank_items(user_emb.to(device), item_emb.to(device), users,
                          min(int(k), self.num_items), exclude, self.batch_size)

    def _check_shapes(self, user_emb: Tensor, item_emb: Tensor) -> None:
        if user_emb.dim() != 2 or user_emb.size(0) != self.num_users:
            raise ValueError(f'user embeddings: expected [{self.num_users}, d], got '
                             f'{tuple(user_emb.shape)}')
        if item_emb.dim() != 2 or item_emb.size(0) != self.num_items:
            raise ValueError(f'item embeddings: expected [{self.num_items}, d], got '
                             f'{tuple(item_emb.shape)}')
        if user_emb.size(1) != item_emb.size(1):
            raise ValueError(f'embedding widths differ: users {user_emb.size(1)}, '
                             f'items {item_emb.size(1)}')


# One Evaluator per (data, ks, batch_size, device), rebuilt if the edges change.
# HeteroData is unhashable, so entries are keyed by id() and hold a weak reference
# (checked on lookup, removed when the data object is collected).
_CACHE: Dict[int, Tuple['weakref.ref', dict]] = {}


def _fingerprint(data: HeteroData) -> tuple:
    store = data[UI]
    parts = []
    for key in ('edge_index', 'valid_edge_label_index', 'test_edge_label_index'):
        t = store[key] if key in store else None
        parts.append(None if t is None else (t.data_ptr(), t._version,
                                             tuple(t.shape)))
    return tuple(parts) + (int(data['user'].num_nodes), int(data['item'].num_nodes))


def get_evaluator(data: HeteroData, ks: Sequence[int] = (5, 10, 20, 50),
                  batch_size: int = 4096,
                  device: Union[str, torch.device, None] = None) -> Evaluator:
    """A cached :class:`Evaluator` for ``data`` (rebuilt when its edges change)."""
    key = (tuple(ks), int(batch_size), None if device is None else str(device))
    entry = _CACHE.get(id(data))
    if entry is None or entry[0]() is not data:
        try:
            ref = weakref.ref(data)
        except TypeError:  # not weak-referenceable: no caching
            return Evaluator(data, ks, batch_size, device)
        entry = (ref, {})
        _CACHE[id(data)] = entry
        weakref.finalize(data, _CACHE.pop, id(data), None)
    per_data = entry[1]
    fp = _fingerprint(data)
    hit = per_data.get(key)
    if hit is None or hit[0] != fp:
        hit = (fp, Evaluator(data, ks, batch_size, device))
        per_data[key] = hit
    return hit[1]


def evaluate(model: torch.nn.Module, data: HeteroData, split: str = 'valid',
             ks: Sequence[int] = (5, 10, 20, 50), batch_size: int = 4096,
             device: Union[str, torch.device, None] = None,
             progress: bool = False) -> Dict[str, float]:
    """Recall, NDCG, Precision and MAP at every ``K`` on ``split``.

    Returns a dict like ``{'recall@20': 0.07, 'ndcg@20': 0.03, ..., 'num_users': U}``.
    The per-split structures are cached for ``data``, so repeated calls are cheap.
    ``device=None`` scores on the model's device.
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected 'valid' or 'test', got {split!r}")
    dev = resolve_device(device) if device is not None else _model_device(model)
    ev = get_evaluator(data, ks, batch_size, dev)
    return ev(model, split, data, progress)


@torch.no_grad()
def recommend(model: torch.nn.Module, data: HeteroData, users: Union[Tensor, Iterable[int]],
              k: int = 20, batch_size: int = 4096,
              device: Union[str, torch.device, None] = None) -> Tuple[Tensor, Tensor]:
    """Top-``k`` items (and scores) for ``users``, each user's training items excluded.

    Returns ``(items [len(users), k], scores [len(users), k])``.
    """
    users = torch.as_tensor(list(users) if not isinstance(users, Tensor) else users,
                            dtype=torch.long)
    num_users = int(data['user'].num_nodes)
    bad = users[(users < 0) | (users >= num_users)]
    if bad.numel():
        raise ValueError(f'user id {int(bad[0])}: expected an id in [0, {num_users})')
    dev = resolve_device(device) if device is not None else _model_device(model)
    ev = get_evaluator(data, (k, ), batch_size, dev)
    was_training = model.training
    model.eval()
    try:
        user_emb, item_emb = model(data)
    finally:
        model.train(was_training)
    items, scores = ev.rank(user_emb, item_emb, users, k)
    return items.cpu(), scores.cpu()


class Popularity(torch.nn.Module):
    r"""Ranks items by their number of training interactions (a baseline).

    It fits the evaluator's model interface with one-dimensional embeddings: every
    user is ``1`` and item :math:`i` is its training count, so the score of
    :math:`(u, i)` is the popularity of :math:`i`.
    """

    def __init__(self, data: HeteroData) -> None:
        super().__init__()
        ei = data[UI].edge_index
        counts = torch.bincount(ei[1].cpu(), minlength=int(data['item'].num_nodes))
        self.register_buffer('item_count', counts.to(torch.float32).view(-1, 1))
        self.num_users = int(data['user'].num_nodes)

    def forward(self, data: Optional[HeteroData] = None) -> Tuple[Tensor, Tensor]:
        ones = self.item_count.new_ones(self.num_users, 1)
        return ones, self.item_count
