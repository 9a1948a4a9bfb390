r"""LATTICE (`"Mining Latent Structures for Multimedia Recommendation"
<https://arxiv.org/abs/2104.09036>`_, Zhang et al., ACM MM 2021), as MMRec computes
it (``src/models/lattice.py``, ``src/configs/model/LATTICE.yaml``, the graph helpers
of ``src/utils/utils.py``).

**Frozen item-item graphs.** Per modality :math:`m`, the similarity-weighted kNN graph
of the raw features, sym-normalised (:class:`~mambarec_pyg.data.transforms.ItemKNN`
with ``weighting='similarity'``, MGCN's graph): :math:`\mathbf{S}_m`.

**Learned item-item graph**, rebuilt from the current projections
:math:`\tilde{\mathbf{X}}_m = T_m(\mathbf{X}_m)` (``Linear(D_m -> d)``, PyTorch's
default initialisation; the raw features :math:`\mathbf{X}_m` are **trainable**, as
MMRec's ``nn.Embedding.from_pretrained(freeze=False)``): per modality the top-``knn_k``
cosine neighbours of each item with their cosine similarities as weights,
:math:`\mathbf{K}_m`, then with the softmax modality weights :math:`\boldsymbol{\alpha}
= \mathrm{softmax}(\mathbf{a})` (a parameter, initialised equal)

.. math::
    \mathbf{W} = \sum_m \alpha_m \mathbf{K}_m, \qquad
    \mathbf{L} = \mathbf{D}^{-1/2}\mathbf{W}\mathbf{D}^{-1/2} \;
    (\mathbf{D} = \mathrm{diag}(\mathbf{W}\mathbf{1})), \qquad
    \mathbf{G} = (1 - \lambda)\,\mathbf{L} + \lambda \sum_m \alpha_m \mathbf{S}_m,

:math:`\lambda` = ``lambda_coeff`` (0.9). The neighbours are chosen without gradient;
the weights (cosines, :math:`\boldsymbol{\alpha}`, the degrees) are differentiable.

**When the learned graph is built** (MMRec's ``build_item_graph`` flag): in
training, by the first forward pass of every epoch (after
:meth:`LATTICE.on_epoch_start`), **with** gradients to the features, the projections
and :math:`\boldsymbol{\alpha}`; the rest of the epoch reuses it detached, so those
parameters receive a gradient from the first batch of each epoch only. In eval mode
it is built afresh from the current weights (MMRec's ``full_sort_predict``).

**Forward and score.**

.. math::
    \mathbf{h} = \mathbf{G}^{L_{mm}}\mathbf{E}_i, \qquad
    [\mathbf{e}_u; \mathbf{e}'_i] = \frac{1}{L+1}\sum_{l=0}^{L}\bar{\mathbf{A}}^l
    [\mathbf{E}_u; \mathbf{E}_i], \qquad
    \mathbf{e}_i = \mathbf{e}'_i + \mathrm{normalize}(\mathbf{h}_i), \qquad
    \hat y_{ui} = \mathbf{e}_u^\top\mathbf{e}_i,

with ``n_layers`` :math:`L_{mm}` = 1, ``n_ui_layers`` :math:`L` = 2 (MMRec's
``len(weight_size)``) and LATTICE's own user-item graph :math:`\bar{\mathbf{A}} =
\mathbf{D}^{-1}(\mathbf{A} + \mathbf{I})`: self-loops and **row** normalisation (each
node averages itself and its neighbours), not the symmetric LightGCN weights.
:math:`\mathbf{E}_u, \mathbf{E}_i` are Xavier-uniform.

**Loss** (MMRec's ``bpr_loss`` of the model):

.. math::
    \mathcal{L} = \frac{1}{B}\sum_b -\log\sigma(\hat y_{ui^+} - \hat y_{ui^-})
    + \lambda_{reg}\,\frac{\frac{1}{2}\sum_b\big(\|\mathbf{e}_{u_b}\|^2 +
    \|\mathbf{e}_{i^+_b}\|^2 + \|\mathbf{e}_{i^-_b}\|^2\big)}{B_{\mathrm{nominal}}}

on the final embeddings, divided by the configured batch size (MMRec's
``self.batch_size``), :math:`\lambda_{reg}` = ``reg_weight``. Protocol: MMRec's yaml
sets the learning-rate decay 0.96 per 50 epochs.

Where this differs from MMRec (nothing that changes what is learned):

* The item-item graphs are sparse here (at most :math:`2Mk` entries per row); MMRec
  holds the learned graph as a dense :math:`N \times N` matrix and multiplies
  densely. The same values: the dense matrix is zero outside the kNN entries.
* Ties among equal similarities are broken by the lower item id (``torch.topk``
  leaves their order open); an all-zero feature row has similarity 0 to every item
  instead of NaN, and a row of the learned graph whose weights sum to
  :math:`\le 0` gets a zero row (MMRec would produce NaN).
* Only ``cf_model: lightgcn`` (the yaml's) is implemented; MMRec's ``ngcf`` and
  ``mf`` branches (and ``mess_dropout``, read by ``ngcf`` only) are not.
  ``feat_embed_dim`` is ``embedding_size`` (both 64).
* Any number of modalities: :math:`\boldsymbol{\alpha}` has one entry per modality
  (MMRec's two, initialised 0.5 each).

**Defaults.** MMRec's yaml gives the grid ``reg_weight`` [0.0, 1e-5, 1e-4, 1e-3] x
``learning_rate`` [1e-4, 5e-4, 1e-3, 5e-3] (16 runs, :attr:`LATTICEConfig.GRID`); the
defaults are ``reg_weight`` 1e-4 and the protocol's learning rate 1e-3 (MMRec's
``overall.yaml``, in the grid).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ConfigError, ModelConfig, check_positive_int, check_range
from ..data.graphs import knn_neighbours, sparse_from_edges
from ..data.index import UI, training_index
from ..data.sampling import BPRBatch
from ..data.transforms import ItemKNN, UserItemNorm
from ..nn.conv import LightGCNPropagation, WeightedPropagation, transpose_sparse
from ..nn.functional import normalize_rows
from ..nn.mmgcn_conv import mean_adjacency
from .base import Recommender, SparseGraphs, feature_table
from .registry import register

__all__ = ['LATTICE', 'LATTICEConfig', 'self_loop_mean_adjacency']


def self_loop_mean_adjacency(data, dtype: Optional[torch.dtype] = None) -> Tensor:
    r""":math:`\mathbf{D}^{-1}(\mathbf{A} + \mathbf{I})` of the training graph as a
    ``[U+N, U+N]`` CSR matrix (users first; the distinct training pairs in both
    directions plus a self-loop on every node, each row divided by its number of
    entries): every node's mean over itself and its neighbours (LATTICE's user-item
    graph; MVGAE's mean aggregation with self-loops)."""
    index = training_index(data)
    users, items = index.distinct_pairs()
    U, N = index.num_users, index.num_items
    nodes = torch.arange(U + N)
    src = torch.cat([users, items + U, nodes])
    dst = torch.cat([items + U, users, nodes])
    return mean_adjacency(torch.stack([src, dst]), (U + N, U + N), dtype)


@dataclass
class LATTICEConfig(ModelConfig):
    """LATTICE (MMRec's ``LATTICE.yaml``)."""

    #: raw feature tables are trainable parameters (as released); false freezes
    #: them (no gradient and no optimizer state: a third of their memory at
    #: most, and the frozen tables share the data's memory).
    trainable_features: bool = True
    #: width d of the ID embeddings and of the modality projections.
    embedding_size: int = 64
    #: hops L_mm of the item-item graph G (h = G^L_mm E_i).
    n_layers: int = 1
    #: LightGCN layers L on the row-normalised user-item graph with self-loops (MMRec's
    #: len(weight_size) = 2); the layer mean is used.
    n_ui_layers: int = 2
    #: neighbours per item in the frozen and the learned kNN graphs (itself included).
    knn_k: int = 10
    #: weight lambda of the frozen graphs in
    #: G = (1 - lambda) L + lambda sum_m alpha_m S_m.
    lambda_coeff: float = 0.9
    #: weight of the L2 penalty on the batch's final embeddings (over the configured
    #: batch size; grid [0.0, 1e-5, 1e-4, 1e-3]).
    reg_weight: float = 1e-4

    GRID: ClassVar[Dict[str, list]] = {
        'model.reg_weight': [0.0, 1e-5, 1e-4, 1e-3],
        'train.lr': [1e-4, 5e-4, 1e-3, 5e-3],
    }

    def __post_init__(self) -> None:
        check_positive_int('model.embedding_size', self.embedding_size)
        check_positive_int('model.knn_k', self.knn_k)
        for name in ('n_layers', 'n_ui_layers'):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f'model.{name}: expected an integer >= 0, got '
                                  f'{value!r}')
        check_range('model.lambda_coeff', self.lambda_coeff, 0.0, 1.0)
        check_range('model.reg_weight', self.reg_weight, 0.0)


class ItemGraph:
    """An item-item graph as weighted edges ``(edge_index [2, E] (source, target),
    weight [E])``, with its CSR matrix and transpose once detached."""

    def __init__(self, edge_index: Tensor, weight: Tensor, num_items: int) -> None:
        self.edge_index, self.weight, self.num_items = edge_index, weight, num_items
        self.matrix = self.transpose = None
        if not weight.requires_grad:
            n = num_items
            self.matrix = sparse_from_edges(edge_index, weight, (n, n), layout='csr')
            self.transpose = transpose_sparse(self.matrix)

    def detach(self) -> 'ItemGraph':
        return ItemGraph(self.edge_index, self.weight.detach(), self.num_items)

    def __deepcopy__(self, memo) -> 'ItemGraph':
        # (CSR tensors have no storage for the generic deepcopy: rebuild them)
        return ItemGraph(self.edge_index.clone(), self.weight.detach().clone(),
                         self.num_items)


@register('lattice')
class LATTICE(Recommender):
    """LATTICE: a learned item-item graph mixed with the frozen kNN graphs (see the
    module docstring)."""

    config_class = LATTICEConfig
    min_modalities = 1
    protocol = {'lr_decay': 0.96, 'weight_decay': 0.0}
    # the learned graph (and through it the features and projections) gets a
    # gradient in an epoch's first step only
    uses_all_parameters = False
    reference = ('Zhang et al., "Mining Latent Structures for Multimedia '
                 'Recommendation", ACM MM 2021')

    @classmethod
    def graph_transforms(cls, config) -> List:
        return [UserItemNorm(), ItemKNN(config.knn_k, 'similarity')]

    def __init__(self, data, config: Optional[LATTICEConfig] = None) -> None:
        super().__init__(data, config)
        data = self.prepare(data, self.config)
        c = self.config
        d = c.embedding_size
        dtype = torch.get_default_dtype()
        self.user_embedding = torch.nn.Embedding(self.num_users, d)
        self.item_embedding = torch.nn.Embedding(self.num_items, d)
        self.features = torch.nn.ParameterDict({
            m: feature_table(data['item'][m], dtype, c.trainable_features)
            for m in self.modalities})
        self.projections = torch.nn.ModuleDict({
            m: torch.nn.Linear(self.features[m].size(1), d) for m in self.modalities})
        #: the modality weights a (alpha = softmax(a)); MMRec's 0.5 each.
        self.modal_weight = torch.nn.Parameter(torch.full((len(self.modalities), ),
                                                          0.5))
        self.propagation = LightGCNPropagation(c.n_ui_layers)
        self.item_view = WeightedPropagation()
        self.graphs = SparseGraphs()
        self.graphs.set('adj', self_loop_mean_adjacency(data, dtype))
        # the frozen graphs S_m as edge lists (mixed with alpha when a graph is built)
        knn = ItemKNN(c.knn_k, 'similarity')
        for m in self.modalities:
            store = data[knn.edge_type(m)]
            self.register_buffer(f'frozen_index_{m}', store.edge_index.cpu().clone(),
                                 persistent=False)
            self.register_buffer(f'frozen_weight_{m}',
                                 store.edge_weight.cpu().to(dtype).clone(),
                                 persistent=False)
        #: the learned graph of the current training epoch (None: build it next).
        self.epoch_graph: Optional[ItemGraph] = None
        self.reset_parameters()
        device = data[UI].edge_index.device
        if device.type != 'cpu':
            self.to(device)

    def reset_parameters(self) -> None:
        """Xavier-uniform ID embeddings, PyTorch's default for the projections, equal
        modality weights (the feature tables keep their current values)."""
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        for m in self.modalities:
            self.projections[m].reset_parameters()
        with torch.no_grad():
            self.modal_weight.fill_(0.5)
        self.epoch_graph = None

    # -- the item-item graph -----------------------------------------------------------
    def learned_knn(self, modality: str) -> Tuple[Tensor, Tensor]:
        r"""``(edge_index [2, N k], cosine [N k])`` of :math:`\mathbf{K}_m`: each
        item's top-``knn_k`` neighbours of the current projections (chosen without
        gradient), with their differentiable cosine similarities."""
        z = self.projections[modality](self.features[modality])
        row, col, _ = knn_neighbours(z, self.config.knn_k)
        zn = normalize_rows(z)
        cosine = (zn[row] * zn[col]).sum(dim=-1)
        return torch.stack([col, row]), cosine

    def build_item_graph(self) -> ItemGraph:
        r""":math:`\mathbf{G} = (1 - \lambda)\mathbf{L} + \lambda\sum_m\alpha_m
        \mathbf{S}_m` from the current weights (edges may repeat; they add)."""
        c = self.config
        n = self.num_items
        alpha = torch.softmax(self.modal_weight, dim=0)
        learned_index, learned_weight, frozen_index, frozen_weight = [], [], [], []
        for k, m in enumerate(self.modalities):
            index, cosine = self.learned_knn(m)
            learned_index.append(index)
            learned_weight.append(alpha[k] * cosine)
            frozen_index.append(getattr(self, f'frozen_index_{m}'))
            frozen_weight.append(alpha[k] * getattr(self, f'frozen_weight_{m}'))
        index = torch.cat(learned_index, dim=1)
        weight = torch.cat(learned_weight)
        # L = D^-1/2 W D^-1/2 with the row sums of W (zero where they are <= 0)
        deg = torch.zeros(n, dtype=weight.dtype, device=weight.device) \
            .index_add(0, index[1], weight)
        inv = torch.where(deg > 0, deg.clamp(min=torch.finfo(deg.dtype).tiny).rsqrt(),
                          torch.zeros_like(deg))
        learned = inv[index[1]] * weight * inv[index[0]]
        return ItemGraph(torch.cat([index] + frozen_index, dim=1),
                         torch.cat([(1.0 - c.lambda_coeff) * learned,
                                    c.lambda_coeff * torch.cat(frozen_weight)]), n)

    def on_epoch_start(self, epoch: int) -> None:
        """Mark the learned graph for rebuilding by the epoch's first forward pass."""
        self.epoch_graph = None
        return None

    def item_graph(self) -> ItemGraph:
        """The graph of the current forward pass: in training the epoch's (built now,
        with gradients, if not yet built; afterwards detached), in eval mode a fresh
        one."""
        if not self.training:
            return self.build_item_graph()
        if self.epoch_graph is None:
            graph = self.build_item_graph()
            self.epoch_graph = graph.detach()
            return graph
        return self.epoch_graph

    def item_item_view(self, graph: ItemGraph) -> Tensor:
        r""":math:`\mathbf{h} = \mathbf{G}^{L_{mm}}\mathbf{E}_i` (on the edges while
        the graph carries gradients, on its CSR matrix otherwise)."""
        h = self.item_embedding.weight
        for _ in range(self.config.n_layers):
            if graph.matrix is None:
                h = self.item_view(h, graph.edge_index, graph.weight)
            else:
                h = self.item_view(h, graph.matrix, transpose=graph.transpose)
        return h

    # -- forward and loss --------------------------------------------------------------
    def embed(self) -> Tuple[Tensor, Tensor]:
        h = self.item_item_view(self.item_graph())
        x = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        out = self.propagation(x, self.graphs['adj'], transpose=self.graphs['adj_t'],
                               symmetric=False)
        user, item = out[:self.num_users], out[self.num_users:]
        return user, item + normalize_rows(h)

    def loss(self, batch: BPRBatch) -> Dict[str, Tensor]:
        users, pos, neg = batch
        user, item = self.embed()
        u, i, j = user[users], item[pos], item[neg]
        bpr = batch.mean(F.softplus((u * j).sum(-1) - (u * i).sum(-1)))
        squares = u.pow(2).sum(-1) + i.pow(2).sum(-1) + j.pow(2).sum(-1)
        reg = self.config.reg_weight * 0.5 * batch.sum(squares) / batch.nominal_size
        return {'total': bpr + reg, 'bpr': bpr, 'reg': reg}
