r"""DualGNN ("DualGNN: Dual Graph Neural Network for Multimedia Recommendation", Wang
et al., IEEE TMM 2021), as MMRec computes it (``src/models/dualgnn.py``,
``src/configs/model/DualGNN.yaml``), and the parts DRAGON shares with it
(:class:`ModalityGCN`, :class:`CooccurrenceRecommender`).

**Per-modality graph network** (:class:`ModalityGCN`, MMRec's ``GCN``). For modality
:math:`m` with the frozen raw features :math:`\mathbf{X}_m`, trainable user
preferences :math:`\mathbf{P}_m \in \mathbb{R}^{U \times d}` (Xavier-normal) and a
two-layer projection (PyTorch's default initialisation, LeakyReLU slope 0.01),

.. math::
    \mathbf{x}_m = \mathrm{normalize}\big([\mathbf{P}_m;
    \mathbf{W}_2\,\mathrm{LReLU}(\mathbf{W}_1\mathbf{X}_m + \mathbf{b}_1) +
    \mathbf{b}_2]\big), \qquad
    \mathbf{r}_m = \sum_{l=0}^{L}\hat{\mathbf{A}}^l\mathbf{x}_m,

:math:`\mathbf{W}_1: D_m \to 4d`, :math:`\mathbf{W}_2: 4d \to d`, row-wise L2
normalisation, :math:`\hat{\mathbf{A}}` the normalised user-item graph
(:class:`~mambarec_pyg.data.transforms.UserItemNorm`) and :math:`L` = ``n_layers``
(the sum of the layers, layer 0 included; MMRec's :math:`\mathbf{x} +
\hat{\mathbf{A}}\mathbf{x} + \hat{\mathbf{A}}^2\mathbf{x}`).

**Fusion** (MMRec's ``construction = 'weighted_sum'``). With per-user modality
weights :math:`\mathbf{w}_u \in \mathbb{R}^M` (a parameter, initialised as the
softmax of a Xavier-normal draw and trained freely afterwards),

.. math::
    \mathbf{u}'_u = \sum_m w_{um}\,\mathbf{r}_{m,u}, \qquad
    \mathbf{i}_i = \sum_m \mathbf{r}_{m,i}.

**User co-occurrence graph** (:mod:`mambarec_pyg.nn.user_graph`): every user adds
the softmax-weighted representations of its top-``user_knn_k`` co-occurring users
(:class:`~mambarec_pyg.data.transforms.UserCooccurrence`, computed from the
training split),

.. math::
    \mathbf{u}_u = \mathbf{u}'_u + \sum_{v} a_{uv}\,\mathbf{u}'_v, \qquad
    \hat y_{ui} = \mathbf{u}_u^\top\mathbf{i}_i.

In training, users with fewer than ``user_knn_k`` neighbours have their list padded
by random repeats, redrawn every epoch (:meth:`CooccurrenceRecommender.on_epoch_start`;
MMRec's ``topk_sample``, with a :class:`torch.Generator` seeded from the global torch
RNG); eval mode uses the unpadded lists (the padded weights at the expected
multiplicities, deterministic). ``pad_user_neighbours=False`` never pads.

**Loss**:

.. math::
    \mathcal{L} = -\frac{1}{B}\sum_b \log_2\sigma(\hat y_{ui^+} - \hat y_{ui^-})
    + \lambda\Big(\sum_m \mathrm{mean}(\mathbf{P}_{m,u_b}^{\circ 2}) +
    \mathrm{mean}(\mathbf{w}^{\circ 2})\Big),

the BPR term in **base 2** (MMRec's ``torch.log2``: the usual BPR divided by
:math:`\ln 2`), the preference term the mean over the batch's users' entries, the
weight term over the whole table; :math:`\lambda` = ``reg_weight``.

Where this differs from MMRec, and why:

* **Fusion of the user representations (a defect of MMRec's code, fixed here).**
  MMRec computes the item sum with ``representation = self.v_rep;
  representation += self.t_rep``, which adds the text representation **in place**
  into ``v_rep``; the user fusion then reads the modified tensor and computes
  :math:`w_{u,v}(\mathbf{r}_v + \mathbf{r}_t) + w_{u,t}\mathbf{r}_t` instead of
  :math:`w_{u,v}\mathbf{r}_v + w_{u,t}\mathbf{r}_t`. Here the users get the
  intended weighted sum; ``mmrec_user_fusion=True`` reproduces MMRec (the first
  modality's term holds the sum of all modalities).
* **Scores.** MMRec ranks with ``result_embed`` cached by the last training batch
  (before its optimiser step, with that epoch's padding); here
  :meth:`~CooccurrenceRecommender.embed` recomputes with the current weights and the
  unpadded lists.
* **Ties and the neighbour file.** MMRec's graph script keeps 200 neighbours per
  user with ``torch.topk`` (ties in an unspecified order) and the models take the
  first 40; here the transform keeps ``user_knn_k`` with ties broken by the lower
  user id (the same neighbours for ``user_knn_k <= 200`` up to ties).
* **Dead code not reproduced.** MMRec builds edge lists with 10% of the items'
  edges dropped per modality and never uses them (its ``GCN.forward`` ignores the
  argument); it creates and L2-regularises an item weight table ``weight_i`` that
  no score reads (its only effect is shrinking itself; not created here, so the
  logged ``reg`` lacks its constant-order term); ``MLP_v``, ``MLP_t`` and
  ``MLP_user`` are unused. The yaml's ``n_layers: 2`` is unused by MMRec's code,
  which always runs two hops; here ``n_layers`` is that hop count (default 2).
* **Any number of modalities.** MMRec is written for image and text; here every
  modality of ``data.modalities`` has its network and its weight in
  :math:`\mathbf{w}_u`. With one modality the user representation is its
  :math:`\mathbf{r}_{m}` alone (MMRec's branch for one modality; no weight table).
* **BPR** is computed as :math:`\mathrm{softplus}(\cdot)/\ln 2`: the same value as
  :math:`-\log_2\sigma(\cdot)` without its overflow.

**Defaults.** MMRec's yaml gives the grid ``reg_weight`` [0.1, 0.01, 1e-3, 1e-4,
1e-5] x ``learning_rate`` [0.1, 0.01, 1e-3, 1e-4, 1e-5] (25 runs,
:attr:`DualGNNConfig.GRID`); the defaults are ``reg_weight`` 1e-3 (the middle) and
the protocol's learning rate 1e-3 (MMRec's ``overall.yaml``, also the grid's middle).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ConfigError, ModelConfig, check_positive_int, check_range
from ..data.index import UI
from ..data.sampling import BPRBatch
from ..data.transforms import UserCooccurrence, UserItemNorm
from ..nn.conv import LightGCNPropagation, WeightedPropagation
from ..nn.functional import frozen_product, normalize_rows
from ..nn.user_graph import neighbour_table, pad_neighbours, user_graph_matrix
from .base import Recommender, SparseGraphs, user_item_matrices
from .registry import register

__all__ = ['DualGNN', 'DualGNNConfig', 'ModalityGCN', 'CooccurrenceRecommender']


class ModalityGCN(torch.nn.Module):
    r"""The graph network of one modality in DualGNN and DRAGON (MMRec's ``GCN``):

    .. math::
        \mathbf{x} = \mathrm{normalize}\big([\mathbf{P};
        \mathbf{W}_2\,\mathrm{LReLU}(\mathbf{W}_1\mathbf{X} + \mathbf{b}_1) +
        \mathbf{b}_2]\big), \qquad
        \mathbf{r} = \sum_{l=0}^{L}\hat{\mathbf{A}}^l\mathbf{x}.

    Args:
        num_users (int): :math:`U` (rows of the preferences :math:`\mathbf{P}`).
        feature_dim (int): :math:`D` of the frozen features :math:`\mathbf{X}`.
        dim (int): the output width :math:`d` (the hidden width is :math:`4d`).
        num_layers (int): :math:`L`.

    Shapes:
        - **input:** features :math:`(N, D)`, adjacency :math:`(U+N, U+N)` (sparse,
          symmetric, users first)
        - **output:** :math:`(U + N, d)`
    """

    def __init__(self, num_users: int, feature_dim: int, dim: int = 64,
                 num_layers: int = 2) -> None:
        super().__init__()
        self.preference = torch.nn.Parameter(torch.empty(num_users, dim))
        self.mlp = torch.nn.Linear(feature_dim, 4 * dim)
        self.mlp_1 = torch.nn.Linear(4 * dim, dim)
        self.propagation = LightGCNPropagation(num_layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Xavier-normal preferences, PyTorch's default for the projections."""
        torch.nn.init.xavier_normal_(self.preference)
        self.mlp.reset_parameters()
        self.mlp_1.reset_parameters()

    def project(self, features: Tensor) -> Tensor:
        """The item rows :math:`\\mathbf{W}_2\\,\\mathrm{LReLU}(\\mathbf{W}_1
        \\mathbf{X} + \\mathbf{b}_1) + \\mathbf{b}_2` (before normalisation); the
        wide first product differentiates in the weight only (the features are
        frozen)."""
        hidden = frozen_product(features, self.mlp.weight.t()) + self.mlp.bias
        return self.mlp_1(F.leaky_relu(hidden))

    def forward(self, features: Tensor, adj: Tensor) -> Tensor:
        x = normalize_rows(torch.cat([self.preference, self.project(features)]))
        # the layer sum is (L + 1) times LightGCN's layer mean
        return self.propagation(x, adj) * (self.propagation.num_layers + 1)


class CooccurrenceRecommender(Recommender):
    """What DualGNN and DRAGON share: one :class:`ModalityGCN` per modality on the
    normalised user-item graph, per-user modality weights, the user co-occurrence
    aggregation with its padding, and the loss (see the module docstring).
    Subclasses define :meth:`fuse` (and may refine the items in :meth:`encode`)."""

    min_modalities = 1
    stochastic_training = True  # the padding of the neighbour lists

    @classmethod
    def graph_transforms(cls, config) -> List:
        return [UserItemNorm(), UserCooccurrence(config.user_knn_k)]

    def __init__(self, data, config=None) -> None:
        super().__init__(data, config)
        data = self.prepare(data, self.config)
        c = self.config
        dtype = torch.get_default_dtype()
        device = data[UI].edge_index.device
        for m in self.modalities:  # frozen features, rebuilt from the data
            self.register_buffer(f'feature_{m}',
                                 data['item'][m].detach().cpu().to(dtype).clone(),
                                 persistent=False)
        self.encoders = torch.nn.ModuleDict({
            m: ModalityGCN(self.num_users, data['item'][m].size(1), c.embedding_size,
                           c.n_layers) for m in self.modalities})
        M = len(self.modalities)
        #: per-user modality weights w_u (only with several modalities).
        self.user_weight = torch.nn.Parameter(torch.empty(self.num_users, M)) \
            if M > 1 else None
        self.user_graph_layer = WeightedPropagation()
        self.graphs = SparseGraphs()
        adj, _ = user_item_matrices(data)
        self.graphs.set('adj', adj, transpose=False)  # symmetric
        store = data[UserCooccurrence(c.user_knn_k).edge_type]
        index, count, length = neighbour_table(store.edge_index.cpu(),
                                               store.edge_weight.cpu(),
                                               self.num_users, c.user_knn_k)
        self.register_buffer('neighbour_index', index, persistent=False)
        self.register_buffer('neighbour_count', count, persistent=False)
        self.register_buffer('neighbour_length', length, persistent=False)
        self.graphs.set('user_graph', user_graph_matrix(index, count, self.num_users,
                                                        dtype))
        self.build_graphs(data)
        self.reset_parameters()
        if device.type != 'cpu':
            self.to(device)

    def build_graphs(self, data) -> None:
        """A subclass's own graphs from the prepared ``data`` (default none)."""

    def reset_parameters(self) -> None:
        """The encoders' initialisation; the modality weights as the softmax of a
        Xavier-normal draw (MMRec's ``softmax(xavier_normal_(...))`` at init)."""
        for enc in self.encoders.values():
            enc.reset_parameters()
        if self.user_weight is not None:
            with torch.no_grad():
                w = torch.empty(self.num_users, len(self.modalities), 1)
                torch.nn.init.xavier_normal_(w)
                self.user_weight.copy_(torch.softmax(w.squeeze(2), dim=1))

    def feature(self, m: str) -> Tensor:
        """The frozen feature table :math:`\\mathbf{X}_m` ``[N, D_m]``."""
        return getattr(self, f'feature_{m}')

    # -- the user graph ----------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        """Pad the short neighbour lists for this epoch (the generator's seed is drawn
        from the global torch RNG)."""
        if not self.config.pad_user_neighbours:
            return None
        seed = int(torch.randint(0, 2**62, (1, )).item())
        device = self.neighbour_index.device
        generator = torch.Generator(device=device).manual_seed(seed)
        index, count = pad_neighbours(self.neighbour_index, self.neighbour_count,
                                      self.neighbour_length, generator)
        self.graphs.set('user_graph_padded', user_graph_matrix(
            index, count, self.num_users, self.graphs['adj'].dtype))
        return None

    def user_graph_name(self) -> str:
        """The aggregation matrix of the current mode: the epoch's padded lists
        (``'user_graph_padded'``) in training mode once padded, the unpadded lists
        (``'user_graph'``) otherwise."""
        if self.training and 'user_graph_padded' in self.graphs:
            return 'user_graph_padded'
        return 'user_graph'

    def aggregate_users(self, user: Tensor) -> Tensor:
        r""":math:`\mathbf{u}' + \mathbf{A}_{\mathrm{co}}\mathbf{u}'` on the graph of
        :meth:`user_graph_name`."""
        name = self.user_graph_name()
        return user + self.user_graph_layer(user, self.graphs[name],
                                            transpose=self.graphs[name + '_t'])

    # -- forward -------------------------------------------------------------------
    def representations(self) -> List[Tensor]:
        """Every modality's :math:`\\mathbf{r}_m` ``[U + N, d]``."""
        adj = self.graphs['adj']
        return [self.encoders[m](self.feature(m), adj) for m in self.modalities]

    def fuse(self, reps: List[Tensor]) -> Tuple[Tensor, Tensor]:
        """``(users [U, d'], items [N, d'])`` from the modality representations,
        before the user graph."""
        raise NotImplementedError

    def encode(self) -> Tuple[Tensor, Tensor]:
        user, item = self.fuse(self.representations())
        return self.aggregate_users(user), item

    def embed(self) -> Tuple[Tensor, Tensor]:
        return self.encode()

    # -- loss ----------------------------------------------------------------------
    def loss(self, batch: BPRBatch) -> Dict[str, Tensor]:
        users, pos, neg = batch
        user, item = self.encode()
        u = user[users]
        diff = (u * item[neg]).sum(-1) - (u * item[pos]).sum(-1)
        bpr = batch.mean(F.softplus(diff)) / math.log(2.0)
        reg = sum(batch.mean(self.encoders[m].preference[users].pow(2))
                  for m in self.modalities)
        if self.user_weight is not None:
            reg = reg + self.user_weight.pow(2).mean()
        reg = self.config.reg_weight * reg
        return {'total': bpr + reg, 'bpr': bpr, 'reg': reg}


@dataclass
class DualGNNConfig(ModelConfig):
    """DualGNN (MMRec's ``DualGNN.yaml``)."""

    #: width d of the user preferences and the modality representations.
    embedding_size: int = 64
    #: hops L of each modality's graph network (the layers 0..L are summed).
    n_layers: int = 2
    #: co-occurring users aggregated per user (MMRec's k = 40).
    user_knn_k: int = 40
    #: weight of the preference and modality-weight penalties (grid [0.1, 0.01,
    #: 1e-3, 1e-4, 1e-5]).
    reg_weight: float = 1e-3
    #: pad users with fewer than user_knn_k neighbours by random repeats in training,
    #: redrawn each epoch (MMRec); false: never.
    pad_user_neighbours: bool = True
    #: reproduce MMRec's in-place sum: the first modality's user term holds the sum
    #: of all modalities' representations.
    mmrec_user_fusion: bool = False

    GRID: ClassVar[Dict[str, list]] = {
        'model.reg_weight': [1e-1, 1e-2, 1e-3, 1e-4, 1e-5],
        'train.lr': [1e-1, 1e-2, 1e-3, 1e-4, 1e-5],
    }

    def __post_init__(self) -> None:
        check_cooccurrence_config(self)
        if not isinstance(self.mmrec_user_fusion, bool):
            raise ConfigError(f'model.mmrec_user_fusion: expected true or false, got '
                              f'{self.mmrec_user_fusion!r}')


def check_cooccurrence_config(config) -> None:
    """The checks of the options DualGNN and DRAGON share."""
    check_positive_int('model.embedding_size', config.embedding_size)
    check_positive_int('model.user_knn_k', config.user_knn_k)
    if not isinstance(config.n_layers, int) or isinstance(config.n_layers, bool) or \
            config.n_layers < 0:
        raise ConfigError(f'model.n_layers: expected an integer >= 0, got '
                          f'{config.n_layers!r}')
    check_range('model.reg_weight', config.reg_weight, 0.0)
    if not isinstance(config.pad_user_neighbours, bool):
        raise ConfigError(f'model.pad_user_neighbours: expected true or false, got '
                          f'{config.pad_user_neighbours!r}')


@register('dualgnn')
class DualGNN(CooccurrenceRecommender):
    """DualGNN: modality graph networks fused per user, and the user co-occurrence
    graph (see the module docstring)."""

    config_class = DualGNNConfig
    reference = ('Wang et al., "DualGNN: Dual Graph Neural Network for Multimedia '
                 'Recommendation", IEEE TMM 2021')

    def fuse(self, reps: List[Tensor]) -> Tuple[Tensor, Tensor]:
        U = self.num_users
        item = reps[0][U:]
        for r in reps[1:]:
            item = item + r[U:]
        if self.user_weight is None:
            return reps[0][:U], item
        users = [r[:U] for r in reps]
        if self.config.mmrec_user_fusion:
            users[0] = sum(users)
        user = sum(self.user_weight[:, m:m + 1] * r for m, r in enumerate(users))
        return user, item
