r"""DRAGON (`"Enhancing Dyadic Relations with Homogeneous Graphs for Multimodal
Recommendation" <https://arxiv.org/abs/2301.12097>`_, Zhou et al., ECAI 2023), as
MMRec computes it (``src/models/dragon.py``, ``src/configs/model/DRAGON.yaml``).

DRAGON is DualGNN's architecture (:mod:`~mambarec_pyg.models.dualgnn`) with the
modalities concatenated instead of summed and a frozen item-item graph on the items:

* **Heterogeneous graph**: one :class:`~mambarec_pyg.models.dualgnn.ModalityGCN` per
  modality, :math:`\mathbf{r}_m = \sum_{l=0}^{L}\hat{\mathbf{A}}^l
  \mathrm{normalize}([\mathbf{P}_m; \mathrm{MLP}_m(\mathbf{X}_m)])` (frozen raw
  features, trainable user preferences, ``n_layers`` :math:`L` = 2).
* **Fusion** (MMRec's ``construction = 'cat'``), with per-user modality weights
  :math:`\mathbf{w}_u` (initialised as a softmax, then free):

  .. math::
      \mathbf{u}'_u = \big\Vert_m\, w_{um}\,\mathbf{r}_{m,u}, \qquad
      \mathbf{i}'_i = \big\Vert_m\, \mathbf{r}_{m,i} \qquad (\text{width } M d).

* **Homogeneous item graph**: FREEDOM's frozen graph
  :math:`\mathbf{S} = \sum_m \alpha_m \mathbf{S}_m`
  (:func:`~mambarec_pyg.models.freedom.mixed_item_graph`: binary top-``knn_k``
  cosine graphs of the raw features, sym-normalised, ``mm_image_weight`` 0.1 for
  the image graph), :math:`\mathbf{i}_i = \mathbf{i}'_i +
  (\mathbf{S}^{L_{mm}}\mathbf{i}')_i` with ``n_mm_layers`` :math:`L_{mm}` = 1.
* **Homogeneous user graph**: :math:`\mathbf{u}_u = \mathbf{u}'_u + \sum_v a_{uv}
  \mathbf{u}'_v` over the top-``user_knn_k`` co-occurring users with softmax weights
  over the co-occurrence counts (:mod:`mambarec_pyg.nn.user_graph`; padded lists in
  training, redrawn each epoch, unpadded in eval mode, as DualGNN).

Score :math:`\hat y_{ui} = \mathbf{u}_u^\top\mathbf{i}_i`. Loss:

.. math::
    \mathcal{L} = -\frac{1}{B}\sum_b \log_2\sigma(\hat y_{ui^+} - \hat y_{ui^-})
    + \lambda\Big(\sum_m \mathrm{mean}(\mathbf{P}_{m,u_b}^{\circ 2}) +
    \mathrm{mean}(\mathbf{w}^{\circ 2})\Big).

Where this differs from MMRec (nothing that changes what is learned):

* **Scores**: MMRec ranks with ``result_embed`` cached by the last training batch;
  here :meth:`DRAGON.embed` recomputes with the current weights and the unpadded
  neighbour lists.
* **Dead code not reproduced**: MMRec wraps the raw features in trainable
  ``nn.Embedding`` tables and creates projections ``image_trs`` / ``text_trs``,
  none of which any output reads (the graph networks read the frozen features; the
  tables only seed the kNN graph, which is built once); the dropped edge lists, the
  unused ``weight_i``, ``MLP_v``, ``MLP_t`` and ``MLP_user`` (DualGNN's list).
  The yaml's ``n_layers: 2`` is unused by MMRec's code, which always runs two hops;
  here ``n_layers`` is that hop count (default 2). ``feat_embed_dim`` is
  ``embedding_size`` (both 64).
* **The item graph** is FREEDOM's: the same binary kNN graphs and mixing, without
  MMRec's :math:`10^{-7}` on the degrees (a relative change below :math:`10^{-8}`),
  all-zero feature rows giving zero similarities instead of NaN, and ties broken by
  the lower item id.
* **Any number of modalities**: the fusion concatenates all modalities of
  ``data.modalities``; the item graph mixes them as FREEDOM does. With one modality
  the users and items are its :math:`\mathbf{r}_m` (MMRec's branch; no weights).
* **BPR** as :math:`\mathrm{softplus}(\cdot)/\ln 2` (the value of MMRec's
  :math:`-\log_2\sigma(\cdot)` without its overflow). User co-occurrence ties:
  see DualGNN.

**Defaults.** MMRec's yaml fixes the architecture (``knn_k`` 10, ``mm_image_weight``
0.1, ``n_mm_layers`` 1) and gives the grid ``reg_weight`` [0.1, 0.01, 1e-3, 1e-4,
1e-5] x ``learning_rate`` [0.1, 0.01, 1e-3, 1e-4, 1e-5] (25 runs,
:attr:`DRAGONConfig.GRID`); the defaults are ``reg_weight`` 1e-3 (the middle) and
the protocol's learning rate 1e-3 (MMRec's ``overall.yaml``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, List, Tuple

import torch
from torch import Tensor

from ..config import ConfigError, ModelConfig, check_positive_int, check_range
from ..data.transforms import ItemKNN, UserCooccurrence, UserItemNorm
from ..nn.conv import WeightedPropagation
from .dualgnn import CooccurrenceRecommender, check_cooccurrence_config
from .freedom import mixed_item_graph
from .registry import register

__all__ = ['DRAGON', 'DRAGONConfig']


@dataclass
class DRAGONConfig(ModelConfig):
    """DRAGON (MMRec's ``DRAGON.yaml``)."""

    #: width d of the user preferences and of each modality's representation.
    embedding_size: int = 64
    #: hops L of each modality's graph network (the layers 0..L are summed).
    n_layers: int = 2
    #: hops L_mm of the frozen item-item graph.
    n_mm_layers: int = 1
    #: neighbours per item in each modality's binary kNN graph (itself included).
    knn_k: int = 10
    #: weight of the 'image' graph in the mixed item-item graph (FREEDOM's rule).
    mm_image_weight: float = 0.1
    #: co-occurring users aggregated per user (MMRec's k = 40).
    user_knn_k: int = 40
    #: weight of the preference and modality-weight penalties (grid [0.1, 0.01,
    #: 1e-3, 1e-4, 1e-5]).
    reg_weight: float = 1e-3
    #: pad users with fewer than user_knn_k neighbours by random repeats in training,
    #: redrawn each epoch (MMRec); false: never.
    pad_user_neighbours: bool = True

    GRID: ClassVar[Dict[str, list]] = {
        'model.reg_weight': [1e-1, 1e-2, 1e-3, 1e-4, 1e-5],
        'train.lr': [1e-1, 1e-2, 1e-3, 1e-4, 1e-5],
    }

    def __post_init__(self) -> None:
        check_cooccurrence_config(self)
        check_positive_int('model.knn_k', self.knn_k)
        if not isinstance(self.n_mm_layers, int) or isinstance(self.n_mm_layers, bool) \
                or self.n_mm_layers < 0:
            raise ConfigError(f'model.n_mm_layers: expected an integer >= 0, got '
                              f'{self.n_mm_layers!r}')
        check_range('model.mm_image_weight', self.mm_image_weight, 0.0, 1.0)


@register('dragon')
class DRAGON(CooccurrenceRecommender):
    """DRAGON: DualGNN's networks concatenated, with FREEDOM's frozen item graph and
    the user co-occurrence graph (see the module docstring)."""

    config_class = DRAGONConfig
    reference = ('Zhou et al., "Enhancing Dyadic Relations with Homogeneous Graphs '
                 'for Multimodal Recommendation", ECAI 2023')

    @classmethod
    def graph_transforms(cls, config) -> List:
        return [UserItemNorm(), ItemKNN(config.knn_k, 'binary'),
                UserCooccurrence(config.user_knn_k)]

    def build_graphs(self, data) -> None:
        self.item_view = WeightedPropagation()
        self.graphs.set('item_graph', mixed_item_graph(
            data, self.modalities, self.config.knn_k, self.config.mm_image_weight,
            self.graphs['adj'].dtype))

    def fuse(self, reps: List[Tensor]) -> Tuple[Tensor, Tensor]:
        U = self.num_users
        if self.user_weight is None:
            return reps[0][:U], reps[0][U:]
        user = torch.cat([self.user_weight[:, m:m + 1] * r[:U]
                          for m, r in enumerate(reps)], dim=1)
        item = torch.cat([r[U:] for r in reps], dim=1)
        return user, item

    def item_item_view(self, item: Tensor) -> Tensor:
        r""":math:`\mathbf{S}^{L_{mm}}\mathbf{i}'`."""
        h = item
        for _ in range(self.config.n_mm_layers):
            h = self.item_view(h, self.graphs['item_graph'],
                               transpose=self.graphs['item_graph_t'])
        return h

    def encode(self) -> Tuple[Tensor, Tensor]:
        user, item = self.fuse(self.representations())
        return self.aggregate_users(user), item + self.item_item_view(item)
