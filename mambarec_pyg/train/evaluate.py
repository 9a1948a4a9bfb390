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

averaged over the evaluated users (a split without interactions is an error, not a
row of zeros; embeddings with NaN or infinite values, which would rank arbitrarily,
are refused with :class:`~mambarec_pyg.errors.NonFiniteError`). These are exactly PyG's
:class:`~torch_geometric.metrics.LinkPredRecall`, :class:`~.LinkPredNDCG`,
:class:`~.LinkPredPrecision` and :class:`~.LinkPredMAP`, which are used here.

Unlike the released code, which recomputes the whole forward pass for every batch of
users, the embeddings are computed once per evaluation (docs/reference.md §7), and
everything that depends only on the data (the evaluated users, their training items
and ground truth, as flat per-batch slices) is built once per split by
:class:`Evaluator` and reused.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch_geometric.data import HeteroData
from torch_geometric.metrics import (LinkPredMAP, LinkPredMetricCollection,
                                     LinkPredNDCG, LinkPredPrecision,
                                     LinkPredRecall)

from ..data.errors import DataError
from ..data.index import UI, training_index
from ..errors import NonFiniteError
from ..ranking import ItemLists, score_rows, transpose_items
from .checkpoint import first_nonfinite
from ..utils import cached_on, eval_view, progress as _progress, resolve_device, \
    tensor_fingerprint

__all__ = ['Evaluator', 'evaluate', 'recommend', 'METRICS', 'SPLITS',
           'per_user_metrics', 'check_finite_embeddings', 'check_split']

#: metric names, in the order they are reported.
METRICS = ('recall', 'ndcg', 'precision', 'map')
_METRIC_CLS = {'recall': LinkPredRecall, 'ndcg': LinkPredNDCG,
               'precision': LinkPredPrecision, 'map': LinkPredMAP}
SPLITS = ('valid', 'test')


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

    def to(self, device) -> '_Split':
        return _Split(self.users.to(device), self.train.to(device),
                      self.truth.to(device))


class Evaluator:
    r"""Evaluates a model (or given embeddings) on the valid or test split.

    Args:
        data (HeteroData): the dataset (layout of :func:`mambarec_pyg.load_mmrec`).
        ks (sequence of int): the cut-offs :math:`K` (default ``(5, 10, 20, 50)``).
        batch_size (int): users scored per batch.
        device: where scores are computed; ``None`` = the embeddings' device.
        item_block (int): ``0`` (default) scores a batch of users against all
            items at once (``batch_size x N`` scores); otherwise against blocks of
            this many items, keeping a running top-:math:`\max K` per user
            (``batch_size x (item_block + max K)`` scores held: catalogs of
            millions). The same lists as the full scores, except that ties at the
            cut-off may be cut differently (:func:`torch.topk` leaves that choice
            unspecified in both).
        sample (dict, optional): split name -> number of users: evaluate that
            split on a fixed random sample of its users (drawn once with
            ``sample_seed``), e.g. ``{'valid': 10000}`` for model selection during
            training; other splits use every user.
        sample_seed (int): the seed of the samples.

    The training items masked per user come from the dataset's shared
    :func:`~mambarec_pyg.data.training_index`.

    Example::

        evaluator = Evaluator(data)
        metrics = evaluator(model, 'valid')          # {'recall@20': ..., ...}
        metrics = evaluator.from_embeddings(u, i, 'test')
    """

    def __init__(self, data: HeteroData, ks: Sequence[int] = (5, 10, 20, 50),
                 batch_size: int = 4096,
                 device: Union[str, torch.device, None] = None, *,
                 item_block: int = 0, sample: Optional[Dict[str, int]] = None,
                 sample_seed: int = 0) -> None:
        ks = tuple(int(k) for k in ks)
        if not ks or any(k <= 0 for k in ks):
            raise ValueError(f'ks: expected positive integers, got {ks!r}')
        if batch_size <= 0:
            raise ValueError(f'batch_size: expected a positive integer, got '
                             f'{batch_size!r}')
        if item_block < 0:
            raise ValueError(f'item_block: expected an integer >= 0, got '
                             f'{item_block!r}')
        self.ks = ks
        self.batch_size = int(batch_size)
        self.item_block = int(item_block)
        self.sample = dict(sample or {})
        self.sample_seed = int(sample_seed)
        self.device = None if device is None else resolve_device(device)
        self.num_users = int(data['user'].num_nodes)
        self.num_items = int(data['item'].num_nodes)
        self.name = str(getattr(data, 'name', '') or 'the data')
        self.index = training_index(data)
        store = data[UI]
        self._split_edges: Dict[str, Tensor] = {}
        for split in SPLITS:
            key = f'{split}_edge_label_index'
            if key in store:
                self._split_edges[split] = store[key].detach().to('cpu', torch.long)
        self._splits: Dict[str, _Split] = {}
        self._on: Dict[Tuple[str, torch.device], _Split] = {}
        self._metrics: Dict[torch.device, LinkPredMetricCollection] = {}

    def has_split(self, split: str) -> bool:
        """Whether ``split`` has at least one interaction to evaluate."""
        edges = self._split_edges.get(split)
        return edges is not None and edges.size(1) > 0

    def check_split(self, split: str) -> None:
        """Raise :class:`~mambarec_pyg.data.DataError` unless ``split`` has
        interactions to evaluate."""
        _require(self.name, split, self.has_split(split))

    # -- precomputation ---------------------------------------------------------
    def _split(self, split: str, device: torch.device) -> _Split:
        cached = self._on.get((split, device))
        if cached is not None:
            return cached
        self.check_split(split)
        base = self._splits.get(split)
        if base is None:
            gt = self._split_edges[split]
            users = torch.unique(gt[0])
            size = self.sample.get(split, 0)
            if 0 < size < users.numel():
                g = torch.Generator().manual_seed(self.sample_seed)
                pick = torch.randperm(users.numel(), generator=g)[:size]
                users = users[pick].sort().values
                gt = gt[:, torch.isin(gt[0], users)]
            local = torch.full((self.num_users, ), -1, dtype=torch.long)
            local[users] = torch.arange(users.numel())
            truth = ItemLists(local[gt[0]], gt[1], users.numel())
            rows, items = self.index.user_items.gather(users)
            train = ItemLists(rows, items, users.numel())
            base = _Split(users, train, truth)
            self._splits[split] = base
        on = base.to(device)
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
                 progress: bool = False, per_user: bool = False) -> Dict[str, float]:
        """Metrics of ``model`` on ``split``; its embeddings are computed once.

        ``model.embed()`` (or ``model()``) must return ``(user_emb [U, d], item_emb
        [N, d])``; it is computed in eval mode on a view of the model
        (:func:`~mambarec_pyg.utils.eval_view`), leaving the model's own mode
        alone. ``progress`` shows a bar over the user batches; ``per_user`` adds
        :func:`per_user_metrics`-style values under ``'per_user'``.
        """
        view = eval_view(model)
        embed = getattr(view, 'embed', None)
        user_emb, item_emb = embed() if callable(embed) else view()
        return self.from_embeddings(user_emb, item_emb, split, progress, per_user)

    @torch.no_grad()
    def from_embeddings(self, user_emb: Tensor, item_emb: Tensor,
                        split: str = 'valid', progress: bool = False,
                        per_user: bool = False) -> Dict[str, float]:
        """Metrics of the scores ``user_emb @ item_emb.T`` on ``split``.

        With ``per_user``, ``result['per_user']`` holds ``users`` (the evaluated
        user ids) and, for every ``recall@K`` and ``ndcg@K``, one value per user
        (their means are the reported metrics).
        """
        device = self.device or user_emb.device
        user_emb, item_emb = user_emb.to(device), item_emb.to(device)
        self._check_shapes(user_emb, item_emb)
        check_finite_embeddings(user_emb, item_emb)
        sp = self._split(split, device)
        coll = self._collection(device)
        coll.reset()
        n = sp.users.numel()
        k = min(max(self.ks), self.num_items)
        item_t = transpose_items(item_emb)
        starts = _progress(range(0, n, self.batch_size), enabled=progress,
                           desc=f'evaluating {split}', unit='batch', leave=False)
        tops = []
        for start in starts:
            end = min(start + self.batch_size, n)
            rows, cols = sp.train.slice(start, end)
            if self.item_block and self.item_block < self.num_items:
                top = _streaming_top(user_emb, item_t, sp.users[start:end], rows,
                                     cols, k, self.item_block)
            else:
                scores = score_rows(user_emb, item_t, sp.users[start:end])
                scores[rows, cols] = float('-inf')
                top = scores.topk(k, dim=1).indices
            g_rows, g_cols = sp.truth.slice(start, end)
            coll.update(top, torch.stack([g_rows, g_cols]))
            if per_user:
                tops.append(top)
        out = {name: float(v) for name, v in coll.compute().items()}
        # report metric by metric, each at every K
        result: Dict[str, object] = {f'{m}@{k}': out[f'{m}@{k}'] for m in METRICS
                                     for k in self.ks}
        result['num_users'] = n
        if per_user:
            top = torch.cat(tops) if tops else torch.empty(0, k, dtype=torch.long,
                                                           device=device)
            values = per_user_metrics(top, sp.truth, self.ks)
            result['per_user'] = {'users': sp.users.cpu(),
                                  **{key: v.cpu() for key, v in values.items()}}
        return result

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


def _streaming_top(user_emb: Tensor, item_t: Tensor, users: Tensor, rows: Tensor,
                   cols: Tensor, k: int, block: int) -> Tensor:
    """The top-``k`` items of ``users`` (training items ``(rows, cols)`` excluded)
    over blocks of ``block`` items, merged into a running top-``k``; never more than
    ``len(users) x (block + k)`` scores."""
    best_v = best_i = None
    num_items = item_t.size(1)
    for lo in range(0, num_items, block):
        hi = min(lo + block, num_items)
        part = item_t[:, lo:hi] if not item_t.is_sparse else \
            item_t.index_select(1, torch.arange(lo, hi, device=item_t.device))
        scores = score_rows(user_emb, part, users)
        inside = (cols >= lo) & (cols < hi)
        scores[rows[inside], cols[inside] - lo] = float('-inf')
        v, i = scores.topk(min(k, hi - lo), dim=1)
        i = i + lo
        if best_v is not None:
            v = torch.cat([best_v, v], 1)
            v, j = v.topk(min(k, v.size(1)), dim=1)
            i = torch.cat([best_i, i], 1).gather(1, j)
        best_v, best_i = v, i
    return best_i


def _require(name: str, split: str, present: bool) -> None:
    if split not in SPLITS:
        raise ValueError(f"split: expected 'valid' or 'test', got {split!r}")
    if not present:
        label = {'valid': 1, 'test': 2}[split]
        raise DataError(f'{name} has no {split} interactions (x_label {label}), so '
                        f'there is nothing to evaluate on the {split} split')


def check_split(data: HeteroData, split: str) -> None:
    """Raise :class:`~mambarec_pyg.data.DataError`, naming the data, unless ``split``
    (``'valid'`` or ``'test'``) has at least one interaction: metrics over no users
    would be zeros that look like results."""
    store = data[UI]
    key = f'{split}_edge_label_index'
    _require(str(getattr(data, 'name', '') or 'the data'), split,
             key in store and store[key].size(1) > 0)


def check_finite_embeddings(user_emb: Tensor, item_emb: Tensor) -> None:
    """Raise :class:`~mambarec_pyg.errors.NonFiniteError` if the embeddings hold a
    NaN or an infinite value (one fused check,
    :func:`~mambarec_pyg.train.checkpoint.first_nonfinite`): scores computed from
    them rank arbitrarily (``topk`` puts NaN first)."""
    bad = first_nonfinite((('user', user_emb), ('item', item_emb)))
    if bad is not None:
        counts = ' and '.join(p for p in (f'{bad.nan} NaN' if bad.nan else '',
                                          f'{bad.inf} infinite' if bad.inf else '')
                              if p)
        raise NonFiniteError(f'the model\'s {bad.name} embeddings are not finite '
                             f'({counts} of {bad.numel} values): its weights diverged, '
                             f'so any ranking it gives is arbitrary')


def per_user_metrics(top: Tensor, truth: ItemLists,
                     ks: Sequence[int]) -> Dict[str, Tensor]:
    r"""Recall@K and NDCG@K of every evaluated user (the values the paired
    significance tests compare).

    Args:
        top: ``[n, k_max]`` ranked item ids per evaluated user.
        truth: each evaluated user's ground-truth items (row ``r`` for ``top[r]``).
        ks: the cut-offs.

    Returns ``{'recall@K': [n], 'ndcg@K': [n]}`` (float64), with the formulas of the
    module docstring; a user without ground truth gets 0.
    """
    n, kmax = top.shape
    rows, items = truth.slice(0, n) if n else (top.new_empty(0), top.new_empty(0))
    num_items = int(max(int(top.max()) if top.numel() else 0,
                        int(items.max()) if items.numel() else 0)) + 1
    keys = torch.unique(rows * num_items + items)
    query = torch.arange(n, device=top.device).view(-1, 1) * num_items + top
    idx = torch.searchsorted(keys, query).clamp_(max=max(keys.numel() - 1, 0))
    hit = (keys[idx] == query) if keys.numel() else torch.zeros_like(query,
                                                                      dtype=torch.bool)
    hit = hit.to(torch.float64)
    size = (truth.rowptr[1:n + 1] - truth.rowptr[:n]).to(torch.float64)
    disc = 1.0 / torch.log2(torch.arange(2, kmax + 2, dtype=torch.float64,
                                         device=top.device))
    out = {}
    for k in ks:
        kk = min(k, kmax)
        hits = hit[:, :kk].sum(dim=1)
        out[f'recall@{k}'] = torch.where(size > 0, hits / size.clamp(min=1),
                                         torch.zeros_like(hits))
        dcg = (hit[:, :kk] * disc[:kk]).sum(dim=1)
        ideal_n = torch.minimum(size, torch.tensor(float(kk), dtype=torch.float64,
                                                   device=top.device)).long()
        cum = torch.cat([disc.new_zeros(1), disc[:kk].cumsum(0)])
        idcg = cum[ideal_n]
        out[f'ndcg@{k}'] = torch.where(idcg > 0, dcg / idcg.clamp(min=1e-12),
                                       torch.zeros_like(dcg))
    return out


def _fingerprint(data: HeteroData) -> tuple:
    store = data[UI]
    parts = []
    for key in ('edge_index', 'valid_edge_label_index', 'test_edge_label_index'):
        parts.append(tensor_fingerprint(store[key]) if key in store else None)
    return tuple(parts) + (int(data['user'].num_nodes), int(data['item'].num_nodes))


def get_evaluator(data: HeteroData, ks: Sequence[int] = (5, 10, 20, 50),
                  batch_size: int = 4096,
                  device: Union[str, torch.device, None] = None) -> Evaluator:
    """A cached :class:`Evaluator` for ``data`` (rebuilt when its edges change)."""
    key = ('evaluator', tuple(ks), int(batch_size),
           None if device is None else str(device))
    return cached_on(data, key, lambda: Evaluator(data, ks, batch_size, device),
                     _fingerprint(data))


def evaluate(model: torch.nn.Module, data: HeteroData, split: str = 'valid',
             ks: Sequence[int] = (5, 10, 20, 50), batch_size: int = 4096,
             device: Union[str, torch.device, None] = None,
             progress: bool = False, per_user: bool = False) -> Dict[str, float]:
    """Recall, NDCG, Precision and MAP at every ``K`` on ``split``.

    Returns a dict like ``{'recall@20': 0.07, 'ndcg@20': 0.03, ..., 'num_users': U}``.
    The per-split structures are cached for ``data``, so repeated calls are cheap.
    ``device=None`` scores on the model's device.
    """
    if split not in SPLITS:
        raise ValueError(f"split: expected 'valid' or 'test', got {split!r}")
    dev = resolve_device(device) if device is not None else _model_device(model)
    ev = get_evaluator(data, ks, batch_size, dev)
    return ev(model, split, progress, per_user)


def recommend(model: torch.nn.Module, users: Union[Tensor, Iterable[int]],
              k: int = 20) -> Tuple[Tensor, Tensor]:
    """Top-``k`` items and scores for ``users``, each user's training items
    excluded (:meth:`Recommender.recommend
    <mambarec_pyg.models.Recommender.recommend>`, on the CPU).

    Returns ``(items [len(users), k], scores [len(users), k])``; a user with fewer
    than ``k`` candidates gets ``-1`` (score ``-inf``) in the remaining places.

    Raises:
        NonFiniteError: a recommended item's score is NaN or infinite (the model's
            weights diverged; ``topk`` ranks NaN first, so the lists would be
            arbitrary).
    """
    users = users if isinstance(users, Tensor) else torch.as_tensor(list(users))
    items, scores = model.recommend(users, k, return_scores=True)
    items, scores = items.cpu(), scores.cpu()
    bad = (items >= 0) & ~torch.isfinite(scores)
    if bool(bad.any()):
        row = int(bad.any(dim=1).nonzero()[0, 0])
        raise NonFiniteError(f'user {int(users.reshape(-1)[row])}: the model scores '
                             f'items {float(scores[row][bad[row]][0])}: its weights '
                             f'diverged, so the recommendations would be arbitrary')
    return items, scores
