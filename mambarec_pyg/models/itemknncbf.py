r"""ItemKNNCBF: content-based item kNN, nothing to train (`"Are We Really Making Much
Progress? A Worrying Analysis of Recent Neural Recommendation Approaches"
<https://arxiv.org/abs/1907.06902>`_, Ferrari Dacrema et al., RecSys 2019), as MMRec
computes it (``src/models/itemknncbf.py``, ``src/configs/model/ItemKNNCBF.yaml``).

The items' content is the concatenation :math:`\mathbf{x}_i = [\mathbf{x}^{m_1}_i;
\mathbf{x}^{m_2}_i; \dots]` of their raw feature rows (MMRec: image, then text). Two
items are as similar as their **shrunk cosine**

.. math::
    s_{ij} = \frac{\mathbf{x}_i^\top\mathbf{x}_j}{\|\mathbf{x}_i\|\,\|\mathbf{x}_j\|
    + h},

:math:`h` = ``shrink`` (10), and every item :math:`i` keeps its ``knn_k`` (10) most
similar items :math:`j` (itself included; ties: the lower id) with weight
:math:`\mathbf{W}_{ij} = s_{ij}` (no normalisation). A user's score of item :math:`j`
sums the weights from the user's training items,

.. math::
    \hat y_{uj} = \sum_{i \in \mathcal{I}_u} \mathbf{W}_{ij}
    = (\mathbf{R}\mathbf{W})_{uj},

with :math:`\mathbf{R}` the binary training interactions. The trainer evaluates the
model once (no parameters).

**Embeddings.** :meth:`ItemKNNCBF.embed` returns :math:`(\mathbf{R}, \mathbf{W}^\top)`
as sparse COO matrices (``[U, N]`` and ``[N, N]``): their inner products are the
scores, and the ranking code (:func:`~mambarec_pyg.ranking.score_rows`) multiplies a
batch of users' rows sparsely. Dense embeddings of width :math:`N` would hold
:math:`U N + N^2` numbers (750 MB at Baby scale) and cost :math:`U N^2` multiply-adds
per evaluation.

Where this differs from MMRec (nothing that changes the ranking): MMRec builds the
dense :math:`N \times N` similarity matrix at once (its ``_with_blocks`` variant is
unused), and ``torch.topk`` leaves ties in an unspecified order; here the
similarities are computed in blocks of rows (:func:`~mambarec_pyg.data.graphs.
knn_neighbours`) and ties go to the lower id. MMRec's ``dummy_embeddings`` parameter
exists only to give its optimiser something to hold; there is none here. Any number
of modalities are concatenated, in the order of ``data.modalities``.

**Defaults and grid**: MMRec's ``knn_k`` [10] and ``shrink`` [10] (single values).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar, Dict, Optional, Tuple

import torch
from torch import Tensor

from ..config import ModelConfig, check_positive_int, check_range
from ..data.errors import DataError
from ..data.graphs import knn_neighbours
from ..data.index import UI, training_index
from ..data.sampling import BPRBatch
from ..ranking import score_rows, transpose_items
from .base import Recommender
from .registry import register

__all__ = ['ItemKNNCBF', 'ItemKNNCBFConfig']


@dataclass
class ItemKNNCBFConfig(ModelConfig):
    """ItemKNNCBF (MMRec's ``ItemKNNCBF.yaml``)."""

    #: most similar items kept per item (itself included).
    knn_k: int = 10
    #: shrink term h of the similarity x_i.x_j / (|x_i| |x_j| + h).
    shrink: float = 10.0

    GRID: ClassVar[Dict[str, list]] = {
        'model.knn_k': [10],
        'model.shrink': [10.0],
    }

    def __post_init__(self) -> None:
        check_positive_int('model.knn_k', self.knn_k)
        check_range('model.shrink', self.shrink, 0.0)


def _coo(row: Tensor, col: Tensor, value: Tensor, size) -> Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='.*Sparse invariant checks')
        return torch.sparse_coo_tensor(torch.stack([row, col]), value, size).coalesce()


@register('itemknncbf')
class ItemKNNCBF(Recommender):
    """Content-based item kNN: a user's score of an item sums the item's shrunk
    cosine similarities to the user's training items (see the module docstring)."""

    config_class = ItemKNNCBFConfig
    min_modalities = 1
    reference = ('Ferrari Dacrema et al., "Are We Really Making Much Progress? A '
                 'Worrying Analysis of Recent Neural Recommendation Approaches", '
                 'RecSys 2019 (content-based item kNN, nothing to train)')

    def __init__(self, data, config: Optional[ItemKNNCBFConfig] = None) -> None:
        super().__init__(data, config)
        c = self.config
        if c.knn_k > self.num_items:
            raise DataError(f'ItemKNNCBF: model.knn_k = {c.knn_k} exceeds the number '
                            f'of items ({self.num_items})')
        dtype = torch.get_default_dtype()
        features = torch.cat([data['item'][m].detach().cpu()
                              for m in self.modalities], dim=1)
        if not bool(torch.isfinite(features).all()):
            raise DataError('ItemKNNCBF: the item features have a non-finite value '
                            '(NaN or inf); expected finite features')
        row, col, sim = knn_neighbours(features, c.knn_k, shrink=float(c.shrink))
        N = self.num_items
        # item j's embedding is column j of W: W^T[j, i] = W[i, j]
        self.register_buffer('item_matrix', _coo(col, row, sim.to(dtype), (N, N)),
                             persistent=False)
        users, items = training_index(data).distinct_pairs()
        self.register_buffer('user_matrix', _coo(
            users, items, torch.ones(users.numel(), dtype=dtype),
            (self.num_users, N)), persistent=False)
        device = data[UI].edge_index.device
        if device.type != 'cpu':
            self.to(device)

    def embed(self) -> Tuple[Tensor, Tensor]:
        """``(R [U, N], W^T [N, N])`` as sparse COO matrices."""
        return self.user_matrix, self.item_matrix

    @torch.no_grad()
    def score(self, users, items) -> Tensor:
        """Scores :math:`(\\mathbf{R}\\mathbf{W})_{uj}` of the pairs ``(users[k],
        items[k])``."""
        users = self._ids(users, self.num_users, 'user')
        items = self._ids(items, self.num_items, 'item')
        if users.shape != items.shape:
            raise ValueError(f'score: expected as many users as items, got '
                             f'{users.numel()} and {items.numel()}')
        rows = score_rows(self.user_matrix, transpose_items(self.item_matrix), users)
        return rows[torch.arange(users.numel(), device=rows.device), items]

    def loss(self, batch: BPRBatch) -> Dict[str, Tensor]:
        raise RuntimeError('ItemKNNCBF has nothing to train')
