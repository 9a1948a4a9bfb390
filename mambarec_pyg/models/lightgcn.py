r"""LightGCN (`"LightGCN: Simplifying and Powering Graph Convolution Network for
Recommendation" <https://arxiv.org/abs/2002.02126>`_, He et al., SIGIR 2020), as
MMRec computes it (``src/models/lightgcn.py``; ../BASELINES.md §3.2).

.. math::
    \mathbf{E}^{(0)} = [\mathbf{E}_u; \mathbf{E}_i], \quad
    \mathbf{E}^{(k+1)} = \hat{\mathbf{A}}\mathbf{E}^{(k)}, \quad
    \mathbf{E} = \frac{1}{K+1}\sum_{k=0}^{K}\mathbf{E}^{(k)}, \quad
    \hat y_{ui} = \mathbf{e}_u^\top\mathbf{e}_i,

with :math:`\hat{\mathbf{A}} = \mathbf{D}^{-1/2}\mathbf{A}\mathbf{D}^{-1/2}` the
normalised user-item graph (no self loops;
:class:`~mambarec_pyg.data.transforms.UserItemNorm`), and

.. math::
    \mathcal{L} = \mathrm{BPR}(\mathbf{E}) + \lambda\,
    \frac{\|\mathbf{E}^{(0)}_{u}\|_F + \|\mathbf{E}^{(0)}_{i^+}\|_F +
    \|\mathbf{E}^{(0)}_{i^-}\|_F}{B}

(MMRec's ``EmbLoss`` on the layer-0 embeddings of the batch). Xavier-uniform
initialisation. No item features.

On several processes (:mod:`~mambarec_pyg.train.distributed`) the BPR mean is
over the global batch (``batch.mean``) and each Frobenius norm is the global
batch's, from the gathered row norms (:func:`~mambarec_pyg.nn.losses.emb_loss`
with ``batch``).

The layers are PyG's :class:`~torch_geometric.nn.conv.LGConv`
(:class:`~mambarec_pyg.nn.LightGCNPropagation`) on the pre-normalised CSR adjacency
the data carries. :class:`torch_geometric.nn.models.LightGCN` is the same model but
normalises the graph with ``gcn_norm`` in every forward pass and propagates over the
edge list, about five times slower on a CPU (docs/reference.md §7); its ``alpha``
layer weights :math:`1/(K+1)` are the mean used here.

MMRec adds :math:`10^{-7}` to the degrees and :math:`10^{-10}` inside the BPR log;
both change nothing at float32 resolution (see :mod:`~mambarec_pyg.models.bpr`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, List, Tuple

import torch
from torch import Tensor

from ..config import ModelConfig, check_positive_int, check_range
from ..data.sampling import BPRBatch
from ..data.transforms import UserItemNorm
from ..nn.conv import LightGCNPropagation
from ..nn.losses import bpr_loss, emb_loss
from .base import Recommender, SparseGraphs, user_item_matrices
from .registry import register

__all__ = ['LightGCN', 'LightGCNConfig']


@dataclass
class LightGCNConfig(ModelConfig):
    """LightGCN (MMRec's ``LightGCN.yaml``)."""

    #: width d of the user and item embeddings.
    embedding_size: int = 64
    #: propagation layers K. MMRec's yaml lists only its grid [1, 2, 3, 4]; the
    #: default here is the LightGCN paper's 3.
    n_layers: int = 3
    #: weight of the EmbLoss regulariser on the layer-0 embeddings. MMRec's yaml lists
    #: only its grid; the default here is the LightGCN paper's 1e-4.
    reg_weight: float = 1e-4

    GRID: ClassVar[Dict[str, list]] = {
        'model.n_layers': [1, 2, 3, 4],
        'model.reg_weight': [1e-2, 1e-3, 1e-4, 1e-5, 1e-6],
    }

    def __post_init__(self) -> None:
        check_positive_int('model.embedding_size', self.embedding_size)
        check_range('model.n_layers', self.n_layers, 0)
        check_range('model.reg_weight', self.reg_weight, 0.0)


@register('lightgcn')
class LightGCN(Recommender):
    """LightGCN (see the module docstring)."""

    config_class = LightGCNConfig
    reference = ('He et al., "LightGCN: Simplifying and Powering Graph Convolution '
                 'Network for Recommendation", SIGIR 2020')

    @classmethod
    def graph_transforms(cls, config) -> List:
        return [UserItemNorm()]

    def __init__(self, data, config: LightGCNConfig = None) -> None:
        super().__init__(data, config)
        data = self.prepare(data, self.config)
        d = self.config.embedding_size
        self.user_embedding = torch.nn.Embedding(self.num_users, d)
        self.item_embedding = torch.nn.Embedding(self.num_items, d)
        self.propagation = LightGCNPropagation(self.config.n_layers)
        self.graphs = SparseGraphs()
        adj, _ = user_item_matrices(data)
        self.graphs.set('adj', adj, transpose=False)  # symmetric
        self.reset_parameters()

    def reset_parameters(self) -> None:
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)

    def embed(self) -> Tuple[Tensor, Tensor]:
        x = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        out = self.propagation(x, self.graphs['adj'])
        return out[:self.num_users], out[self.num_users:]

    def loss(self, batch: BPRBatch) -> Dict[str, Tensor]:
        users, pos, neg = batch
        user, item = self.embed()
        u, i, j = user[users], item[pos], item[neg]
        bpr = bpr_loss((u * i).sum(dim=-1), (u * j).sum(dim=-1), batch)
        reg = self.config.reg_weight * emb_loss(self.user_embedding(users),
                                                self.item_embedding(pos),
                                                self.item_embedding(neg), batch=batch)
        return {'total': bpr + reg, 'bpr': bpr, 'reg': reg}
