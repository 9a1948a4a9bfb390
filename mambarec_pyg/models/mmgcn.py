r"""MMGCN (`"MMGCN: Multi-modal Graph Convolution Network for Personalized
Recommendation of Micro-video" <https://doi.org/10.1145/3343031.3351034>`_, Wei et
al., ACM MM 2019), as MMRec computes it (``src/models/mmgcn.py``;
../BASELINES.md §3.4).

One graph network per modality :math:`m` on the unnormalised user-item graph (the
training pairs in both directions, no self loops). Its input is the L2-normalised
table :math:`\mathbf{x}^0 = \mathrm{normalize}([\mathbf{P}_m;
\mathrm{Lin}_m(\mathbf{X}_m)])`: trainable user preferences :math:`\mathbf{P}_m`
above the item features (through the latent layer :math:`\mathrm{Lin}_m: D_m \to
256` when the modality is wider than ``latent_threshold``; raw otherwise). Layers
:math:`l = 1..L`:

.. math::
    \mathbf{h}^l_i = \mathrm{LReLU}\Big(\frac{1}{|\mathcal{N}(i)|}
    \sum_{j \in \mathcal{N}(i)} \mathbf{x}^{l-1}_j \mathbf{W}^l\Big), \quad
    \hat{\mathbf{x}}^l_i = \mathrm{LReLU}(\mathbf{L}^l \mathbf{x}^{l-1}_i +
    \mathbf{b}^l) + \mathbf{e}_i, \quad
    \mathbf{x}^l_i = \mathrm{LReLU}(\mathbf{G}^l [\mathbf{h}^l_i;
    \hat{\mathbf{x}}^l_i] + \mathbf{c}^l),

with :math:`\mathbf{e}` the ID embeddings shared by the modalities and LeakyReLU
slope 0.01; :math:`\mathbf{W}^1` keeps the input width, later layers are
:math:`d \to d`. Fusion and score: :math:`\mathbf{r} = \frac{1}{M} \sum_m
\mathbf{x}^L_m`, :math:`\hat y_{ui} = \mathbf{r}_u^\top \mathbf{r}_i`. Loss:

.. math::
    \mathcal{L} = -\frac{1}{B}\sum_b \log\sigma(\hat y_{ui^+} - \hat y_{ui^-})
    + \lambda \Big(\mathrm{mean}\big([\mathbf{e}_u; \mathbf{e}_u]^{\circ 2} +
    [\mathbf{e}_{i^+}; \mathbf{e}_{i^-}]^{\circ 2}\big) +
    \mathrm{mean}(\mathbf{P}_{m_1}^{\circ 2})\Big),

the means over all entries (the ID term over the :math:`2B \times d` stacked batch,
the preference term over all users). Initialisation as MMRec: Xavier-normal ID
embeddings, preferences, graph weights :math:`\mathbf{W}^l`, :math:`\mathbf{L}^l`
and :math:`\mathbf{G}^1`; PyTorch's default for the latent layer and
:math:`\mathbf{G}^{l \ge 2}` (MMRec never re-initialises them).

On several processes (:mod:`~mambarec_pyg.train.distributed`) the BPR term and the
ID term are means of per-triple values over the global batch (``batch.mean``,
:func:`~mambarec_pyg.nn.losses.stacked_square_mean`); the preference term reads no
batch row.

Where this differs from MMRec, and why:

* **Trained ID embeddings and preferences.** MMRec builds both as plain tensors
  (``xavier_normal_(torch.rand(..., requires_grad=True)).to(device)``), not
  ``nn.Parameter``: they are missing from ``model.parameters()``, keep their random
  initial values for the whole run, and the regulariser (which only reads them) has
  no effect on training. Here they are parameters. ``train_id_embeddings=False``
  reproduces MMRec: they become fixed buffers (saved with the model) and only the
  layers train, so the model has no free per-user or per-item parameters. On
  ``tiny`` (lr 0.01, batch 128, 30 epochs, seeds 999 and 1-3) the mean best valid
  Recall@20 was 0.754 trained vs 0.729 frozen (test 0.714 vs 0.686); the effect
  at Baby scale has not been measured here.
* **Layer count.** MMRec's yaml sets ``n_layers: 2``, which its code passes on and
  never reads: the forward pass always runs three layers. ``n_layers`` here is
  used, with MMRec's effective 3 as the default.
* **Any number of modalities.** MMRec is written for a visual table (4096-d, with
  the latent layer of width 256) and a text table (384-d, raw). Here every modality
  wider than ``latent_threshold`` (1024) features gets a latent layer of width
  ``dim_latent`` (256), the others enter raw: on the paper's data this is exactly
  MMRec's choice. MMRec regularises only the visual preferences; here that term
  reads the first modality's (``image`` on the paper's data, whose modalities load
  sorted by name).
* **Scores.** MMRec's ``full_sort_predict`` ranks with the representations cached
  by the last training batch (computed before that batch's optimiser step);
  :meth:`MMGCN.embed` recomputes them with the current weights.
* **BPR.** MMRec's :math:`-\log\sigma(\cdot)` is computed as
  :math:`\mathrm{softplus}(-\cdot)`: the same value, without its overflow.
* **Learning-rate grid.** MMRec's ``MMGCN.yaml`` writes ``[0.0001, 0.0005,
  0.001.0.005, 0.01]``, and YAML reads ``0.001.0.005`` as one string; the grid here
  has the evident 1e-3 and 5e-3 (BASELINES.md §3.4).

Computation (same function as MMRec's, cheaper): the mean aggregation is a product
with the row-normalised adjacency (:func:`mean_adjacency`; ``propagation='sparse'``,
with a precomputed transpose for the backward pass) instead of PyG's gather-scatter
over the 2E directed edges (``propagation='edges'``, MMRec's computation). The graph
is bipartite, so each layer propagates items -> users and users -> items separately,
and :class:`MMGCNConv` multiplies by :math:`\mathbf{W}^l` on the side with fewer
rows: :math:`(\bar{\mathbf{A}}\mathbf{x})\mathbf{W} = \bar{\mathbf{A}}
(\mathbf{x}\mathbf{W})`, so each direction's product with :math:`\mathbf{W}^l`
runs on :math:`\min(U, N)` rows (on Baby the :math:`D \times D` products of the
first layer on :math:`2N` rows instead of :math:`U + N`). The input rows are normalised by
:func:`~mambarec_pyg.nn.functional.normalize_rows` (the value of
:func:`torch.nn.functional.normalize`, a cheaper backward pass).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear, Parameter

from ..config import ModelConfig, check_choice, check_positive_int, check_range
from ..data.index import training_index
from ..data.sampling import BPRBatch
from ..nn.mmgcn_conv import MMGCNConv, mean_adjacency
from ..nn.functional import normalize_rows
from ..nn.losses import bpr_loss, stacked_square_mean
from .base import Recommender, SparseGraphs
from .registry import register

__all__ = ['MMGCN', 'MMGCNConfig', 'MMGCNConv', 'mean_adjacency']


@dataclass
class MMGCNConfig(ModelConfig):
    """MMGCN (MMRec's ``MMGCN.yaml``)."""

    #: width d of the ID embeddings and of the layers after the first.
    embedding_size: int = 64
    #: graph-convolution layers L. MMRec's forward always runs 3 (its yaml's
    #: ``n_layers: 2`` is never read).
    n_layers: int = 3
    #: width of the latent layer Lin(D_m -> dim_latent) in front of the wide
    #: modalities (MMRec: 256, for the 4096-d visual features).
    dim_latent: int = 256
    #: modalities with more features than this pass through the latent layer; the
    #: others enter raw (MMRec: the 4096-d visual table does, the 384-d text
    #: table does not).
    latent_threshold: int = 1024
    #: weight of the L2 term on the batch's ID embeddings and the first modality's
    #: user preferences. MMRec's yaml lists only its grid; the default is that of
    #: ``weiyinwei/MMGCN`` (its ``weight_decay``, used as this weight): 1e-5.
    reg_weight: float = 1e-5
    #: train the ID embeddings and user preferences (the paper). false reproduces
    #: MMRec, where they are plain tensors that keep their random initial values
    #: (and the regulariser has no effect).
    train_id_embeddings: bool = True
    #: mean aggregation: ``'sparse'`` (products with the row-normalised adjacency,
    #: fused backward) or ``'edges'`` (PyG's gather-scatter over the edge list, as
    #: MMRec); same values.
    propagation: str = 'sparse'

    GRID: ClassVar[Dict[str, list]] = {
        'model.reg_weight': [0.0, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1],
        'train.lr': [1e-4, 5e-4, 1e-3, 5e-3, 1e-2],
    }

    def __post_init__(self) -> None:
        for name in ('embedding_size', 'n_layers', 'dim_latent'):
            check_positive_int(f'model.{name}', getattr(self, name))
        check_range('model.latent_threshold', self.latent_threshold, 0)
        check_range('model.reg_weight', self.reg_weight, 0.0)
        check_choice('model.train_id_embeddings', self.train_id_embeddings,
                     (True, False))
        check_choice('model.propagation', self.propagation, ('sparse', 'edges'))


def _table(module: torch.nn.Module, name: str, value: Tensor, trainable: bool) -> None:
    """A trainable parameter, or a fixed buffer saved with the model."""
    if trainable:
        module.register_parameter(name, Parameter(value))
    else:
        module.register_buffer(name, value)


class _ModalityGCN(torch.nn.Module):
    """MMRec's ``GCN``: one modality's user preferences, latent layer and layers."""

    def __init__(self, num_users: int, in_features: int, latent: Optional[int],
                 width: int, num_layers: int, trainable: bool, fused: bool) -> None:
        super().__init__()
        first = latent or in_features
        self.latent = Linear(in_features, latent) if latent else None
        _table(self, 'preference', torch.empty(num_users, first), trainable)
        dims = [first] + [width] * (num_layers - 1)
        self.convs = torch.nn.ModuleList(
            [MMGCNConv(w, w, fused=fused) for w in dims])
        self.linears = torch.nn.ModuleList([Linear(w, width) for w in dims])
        self.combines = torch.nn.ModuleList([Linear(w + width, width) for w in dims])

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_normal_(self.preference)
        if self.latent is not None:
            self.latent.reset_parameters()
        for layer, (conv, lin, comb) in enumerate(zip(self.convs, self.linears,
                                                      self.combines)):
            conv.reset_parameters()
            lin.reset_parameters()
            torch.nn.init.xavier_normal_(lin.weight)
            comb.reset_parameters()
            if layer == 0:  # MMRec re-initialises only the first combination layer
                torch.nn.init.xavier_normal_(comb.weight)

    def forward(self, features: Tensor, id_embedding: Tensor, to_users: dict,
                to_items: dict) -> Tensor:
        """``[U + N, d]``: the last layer's output, users first (``to_users``,
        ``to_items``: the graph arguments of :meth:`MMGCNConv.forward`)."""
        # Users and items are kept apart (no concatenated copies of the wide first
        # layer); row-wise ops are the same on both halves.
        items = self.latent(features) if self.latent is not None else features
        x_u, x_i = normalize_rows(self.preference), normalize_rows(items)
        U = x_u.size(0)
        e_u, e_i = id_embedding[:U], id_embedding[U:]
        for conv, lin, comb in zip(self.convs, self.linears, self.combines):
            # (in place: none of these outputs is needed by its own backward)
            h_u = F.leaky_relu(conv(x_i, **to_users), inplace=True)
            h_i = F.leaky_relu(conv(x_u, **to_items), inplace=True)
            x_u = self._combine(comb, h_u, F.leaky_relu(lin(x_u), inplace=True) + e_u)
            x_i = self._combine(comb, h_i, F.leaky_relu(lin(x_i), inplace=True) + e_i)
        return torch.cat([x_u, x_i])

    @staticmethod
    def _combine(comb: Linear, h: Tensor, x_hat: Tensor) -> Tensor:
        r""":math:`\mathrm{LReLU}(\mathbf{G}[\mathbf{h}; \hat{\mathbf{x}}] +
        \mathbf{c})`, as two products (no concatenated copy)."""
        w_h, w_x = comb.weight.split([h.size(1), x_hat.size(1)], dim=1)
        out = torch.addmm(comb.bias, h, w_h.t()).addmm_(x_hat, w_x.t())
        return F.leaky_relu(out, inplace=True)


@register('mmgcn')
class MMGCN(Recommender):
    """MMGCN (see the module docstring)."""

    config_class = MMGCNConfig
    min_modalities = 1
    reference = ('Wei et al., "MMGCN: Multi-modal Graph Convolution Network for '
                 'Personalized Recommendation of Micro-video", ACM MM 2019')

    def __init__(self, data, config: MMGCNConfig = None) -> None:
        super().__init__(data, config)
        c = self.config
        U, N, d = self.num_users, self.num_items, c.embedding_size
        dtype = torch.get_default_dtype()
        self._build_graphs(data)
        for m in self.modalities:
            self.register_buffer(f'feature_{m}', data['item'][m].detach().to(
                'cpu', dtype).clone(), persistent=False)
        _table(self, 'id_embedding', torch.empty(U + N, d), c.train_id_embeddings)
        self.encoders = torch.nn.ModuleDict()
        for m in self.modalities:
            dim = int(data['item'][m].size(1))
            latent = c.dim_latent if dim > c.latent_threshold else None
            self.encoders[m] = _ModalityGCN(U, dim, latent, d, c.n_layers,
                                            c.train_id_embeddings,
                                            fused=c.propagation == 'sparse')
        self.reset_parameters()

    def _build_graphs(self, data) -> None:
        users, items = training_index(data).distinct_pairs()
        U, N = self.num_users, self.num_items
        # items -> users (targets are users) and users -> items
        self.register_buffer('edges_to_users', torch.stack([items, users]),
                             persistent=False)
        self.register_buffer('edges_to_items', torch.stack([users, items]),
                             persistent=False)
        self.graphs = SparseGraphs()
        self.graphs.set('to_users', mean_adjacency(self.edges_to_users, (U, N)))
        self.graphs.set('to_items', mean_adjacency(self.edges_to_items, (N, U)))

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_normal_(self.id_embedding)
        for encoder in self.encoders.values():
            encoder.reset_parameters()

    def _graph_args(self) -> Tuple[dict, dict]:
        """The arguments of :meth:`MMGCNConv.forward` for items -> users and
        users -> items."""
        U, N = self.num_users, self.num_items
        if self.config.propagation == 'edges':
            return ({'edge_index': self.edges_to_users, 'size': (N, U)},
                    {'edge_index': self.edges_to_items, 'size': (U, N)})
        g = self.graphs
        return ({'edge_index': g['to_users'], 'transpose': g['to_users_t']},
                {'edge_index': g['to_items'], 'transpose': g['to_items_t']})

    def representations(self) -> Tensor:
        """``[U + N, d]``: the mean over the modalities of their last layers."""
        to_users, to_items = self._graph_args()
        out = [encoder(getattr(self, f'feature_{m}'), self.id_embedding, to_users,
                       to_items)
               for m, encoder in self.encoders.items()]
        return torch.stack(out).mean(dim=0) if len(out) > 1 else out[0]

    def embed(self) -> Tuple[Tensor, Tensor]:
        rep = self.representations()
        return rep[:self.num_users], rep[self.num_users:]

    def loss(self, batch: BPRBatch) -> Dict[str, Tensor]:
        users, pos, neg = batch
        U = self.num_users
        rep = self.representations()
        u, i, j = rep[users], rep[U + pos], rep[U + neg]
        bpr = bpr_loss((u * i).sum(dim=-1), (u * j).sum(dim=-1), batch)
        e = self.id_embedding
        id_term = stacked_square_mean(e[users], e[U + pos], e[U + neg], batch)
        first = self.encoders[self.modalities[0]].preference
        reg = self.config.reg_weight * (id_term + first.square().mean())
        return {'total': bpr + reg, 'bpr': bpr, 'reg': reg}
