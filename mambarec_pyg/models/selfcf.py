r"""SelfCF with embedding dropout on a LightGCN encoder (`"SelfCF: A Simple Framework
for Self-supervised Collaborative Filtering" <https://arxiv.org/abs/2107.03019>`_,
Zhou et al., ACM TORS 2023), as MMRec computes it: its ``SELFCFED_LGN``
(``src/models/selfcfed_lgn.py``, the encoder ``LightGCN_Encoder`` of
``src/common/encoders.py``, ``src/configs/model/SELFCFED_LGN.yaml``). No item
features, no negatives.

**Online encoder.** LightGCN on the normalised user-item graph, the layer mean over
layers :math:`0..L` (:math:`L` = ``n_layers``):

.. math::
    [\mathbf{U}; \mathbf{I}] = \frac{1}{L+1}\sum_{l=0}^{L}\mathbf{A}^l
    [\mathbf{E}_u; \mathbf{E}_i],

with :math:`\mathbf{A} = \hat{\mathbf{A}}` (:class:`~mambarec_pyg.data.transforms.
UserItemNorm`) in eval mode. In training mode every forward pass (every batch)
drops the graph's entries: a rate :math:`r \sim \mathcal{U}[0, 1)` is drawn, then
each of the :math:`2|E|` non-zeros of :math:`\hat{\mathbf{A}}` (the two directions
independently) is kept with probability :math:`1 - r` and scaled by
:math:`1/(1 - r)` (:meth:`SelfCF.dropped_adjacency`; MMRec's ``sparse_dropout``
with ``drop_ratio`` 1).

**Views and loss** on the batch's pairs :math:`(u, i)` (its negatives are ignored),
with the predictor :math:`p` (``Linear(d, d)``, PyTorch's default initialisation) and
the target views :math:`\bar{\mathbf{u}} = \mathrm{dropout}_q(\mathbf{U}_u)`,
:math:`\bar{\mathbf{i}} = \mathrm{dropout}_q(\mathbf{I}_i)` (no gradient; inverted
dropout, :math:`q` = ``dropout``):

.. math::
    \mathcal{L} = -\frac{1}{2B}\sum_b \cos(p(\mathbf{U}_{u_b}), \bar{\mathbf{i}}_b)
    - \frac{1}{2B}\sum_b \cos(p(\mathbf{I}_{i_b}), \bar{\mathbf{u}}_b)
    + \lambda\,\frac{1}{2}\sum_b \big(\|\mathbf{U}_{u_b}\|^2 +
    \|\mathbf{I}_{i_b}\|^2\big),

:math:`\lambda` = ``reg_weight`` (MMRec's ``L2Loss`` on the batch's encoder outputs,
a sum).

**Score** (eval mode, full graph, no dropout):

.. math::
    \hat y_{ui} = p(\mathbf{U}_u)^\top\mathbf{I}_i + \mathbf{U}_u^\top p(\mathbf{I}_i),

the inner product of :math:`[p(\mathbf{U}_u); \mathbf{U}_u]` and
:math:`[\mathbf{I}_i; p(\mathbf{I}_i)]` (what :meth:`SelfCF.embed` returns, ``2d``
wide).

Where this differs from MMRec (nothing that changes what is learned):

* MMRec draws the rate with ``np.random`` and the masks with ``torch.rand``; here
  both come from torch's global generator (same distributions, other draws), so a
  seeded run repeats and a resumed run continues the stream. MMRec's graph has
  :math:`10^{-7}` on the degrees (below float32 resolution).
* MMRec's trainer samples no negatives for it (``use_neg_sampling: False``); here the
  shared sampler draws them and the loss ignores them.

**Defaults.** MMRec's yaml gives only grids: ``n_layers`` [1, 2], ``dropout`` [0.1,
0.2, 0.5], ``reg_weight`` [0.1, 0.01, 1e-3, 1e-4, 1e-5, 0.0] (36 runs,
:attr:`SelfCFConfig.GRID`). The defaults are ``n_layers`` 2 (the deeper encoder),
``dropout`` 0.2 and ``reg_weight`` 1e-3, the middle values of the other two grids.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from ..config import ModelConfig, check_positive_int, check_range
from ..data.sampling import BPRBatch
from ..data.transforms import UserItemNorm
from ..nn.conv import LightGCNPropagation
from .base import Recommender, SparseGraphs, user_item_matrices
from .registry import register

__all__ = ['SelfCF', 'SelfCFConfig']


@dataclass
class SelfCFConfig(ModelConfig):
    """SelfCF with embedding dropout (MMRec's ``SELFCFED_LGN.yaml``)."""

    #: width d of the user and item embeddings and of the predictor.
    embedding_size: int = 64
    #: LightGCN layers L of the encoder (layer mean; grid [1, 2]).
    n_layers: int = 2
    #: dropout rate q of the target views (grid [0.1, 0.2, 0.5]).
    dropout: float = 0.2
    #: weight of the L2 penalty 1/2 sum (||U_u||^2 + ||I_i||^2) on the batch's encoder
    #: outputs (grid [0.1, 0.01, 1e-3, 1e-4, 1e-5, 0.0]).
    reg_weight: float = 1e-3

    GRID: ClassVar[Dict[str, list]] = {
        'model.n_layers': [1, 2],
        'model.dropout': [0.1, 0.2, 0.5],
        'model.reg_weight': [0.1, 0.01, 1e-3, 1e-4, 1e-5, 0.0],
    }

    def __post_init__(self) -> None:
        check_positive_int('model.embedding_size', self.embedding_size)
        check_positive_int('model.n_layers', self.n_layers)
        check_range('model.dropout', self.dropout, 0.0, 1.0, high_open=True)
        check_range('model.reg_weight', self.reg_weight, 0.0)


@register('selfcf')
class SelfCF(Recommender):
    """SelfCF_ed on LightGCN (MMRec's ``SELFCFED_LGN``; see the module docstring)."""

    config_class = SelfCFConfig
    stochastic_training = True  # the graph's and the target views' dropout
    reference = ('Zhou et al., "SelfCF: A Simple Framework for Self-supervised '
                 'Collaborative Filtering", ACM TORS 2023')

    @classmethod
    def graph_transforms(cls, config) -> List:
        return [UserItemNorm()]

    def __init__(self, data, config: Optional[SelfCFConfig] = None) -> None:
        super().__init__(data, config)
        data = self.prepare(data, self.config)
        d = self.config.embedding_size
        self.user_embedding = torch.nn.Embedding(self.num_users, d)
        self.item_embedding = torch.nn.Embedding(self.num_items, d)
        self.predictor = torch.nn.Linear(d, d)
        self.propagation = LightGCNPropagation(self.config.n_layers)
        self.graphs = SparseGraphs()
        adj, _ = user_item_matrices(data)
        self.graphs.set('adj', adj, transpose=False)  # symmetric
        # The transpose of a matrix with adj's (symmetric) pattern has the same
        # indices and the values permuted: position of (j, i) for the entry (i, j).
        crow, col = adj.crow_indices(), adj.col_indices()
        row = torch.repeat_interleave(torch.arange(crow.numel() - 1), crow.diff())
        n = crow.numel() - 1
        key = row * n + col
        self.register_buffer('transpose_perm',
                             torch.searchsorted(key, col * n + row), persistent=False)
        self.reset_parameters()
        device = data['user', 'interacts', 'item'].edge_index.device
        if device.type != 'cpu':
            self.to(device)

    def reset_parameters(self) -> None:
        """Xavier-uniform embeddings, PyTorch's default for the predictor."""
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        self.predictor.reset_parameters()

    # -- the encoder -------------------------------------------------------------------
    def dropped_adjacency(self, keep: Tensor, rate: float) -> Tuple[Tensor, Tensor]:
        """The adjacency with the entries where ``keep`` is false set to zero and the
        others scaled by ``1 / (1 - rate)``, and its transpose (CSR, same pattern)."""
        adj = self.graphs['adj']
        values = adj.values() * keep.to(adj.dtype) / (1.0 - rate)
        crow, col = adj.crow_indices(), adj.col_indices()
        with warnings.catch_warnings():
            warnings.filterwarnings('ignore', message='.*Sparse CSR tensor support')
            dropped = torch.sparse_csr_tensor(crow, col, values, adj.shape,
                                              check_invariants=False)
            transpose = torch.sparse_csr_tensor(crow, col,
                                                values[self.transpose_perm],
                                                adj.shape, check_invariants=False)
        return dropped, transpose

    def draw_graph_dropout(self) -> Tuple[Tensor, float]:
        """``(keep [2|E|], rate)`` of one training forward: the rate
        :math:`r \\sim \\mathcal{U}[0, 1)`, then each entry kept with probability
        :math:`1 - r`, from torch's global generator."""
        adj = self.graphs['adj']
        rate = float(torch.rand(()).item())
        keep = torch.rand(adj.values().numel(), device=adj.device) >= rate
        return keep, rate

    def encode(self) -> Tuple[Tensor, Tensor]:
        r"""The online :math:`(\mathbf{U}, \mathbf{I})`: on a freshly dropped graph in
        training mode, on the full graph in eval mode."""
        x = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        if self.training:
            adj, transpose = self.dropped_adjacency(*self.draw_graph_dropout())
            out = self.propagation(x, adj, transpose=transpose, symmetric=False)
        else:
            out = self.propagation(x, self.graphs['adj'])
        return out[:self.num_users], out[self.num_users:]

    def embed(self) -> Tuple[Tensor, Tensor]:
        user, item = self.encode()
        return (torch.cat([self.predictor(user), user], dim=1),
                torch.cat([item, self.predictor(item)], dim=1))

    # -- loss ------------------------------------------------------------------------
    def target_mask(self, batch: BPRBatch, like: Tensor) -> Optional[Tensor]:
        """This process's rows of the inverted-dropout mask ``(rand >= q) / (1 - q)``
        of one target view, drawn for the whole global batch (``None`` for q = 0)."""
        q = self.config.dropout
        if q <= 0.0:
            return None
        r = torch.rand(batch.num_global, like.size(1), device=like.device,
                       dtype=like.dtype)
        return batch.local((r >= q).to(like.dtype).div_(1.0 - q))

    def loss(self, batch: BPRBatch) -> Dict[str, Tensor]:
        users, items = batch[0], batch[1]  # the negatives are ignored
        user, item = self.encode()
        u, i = user[users], item[items]
        with torch.no_grad():
            u_mask = self.target_mask(batch, u)
            i_mask = self.target_mask(batch, i)
            u_target = u.detach() if u_mask is None else u.detach() * u_mask
            i_target = i.detach() if i_mask is None else i.detach() * i_mask
        online = self.predictor(torch.cat([u, i]))
        # (slicing, not split(): a process may hold no triples of a short batch)
        u_online, i_online = online[:users.numel()], online[users.numel():]
        align = -(batch.mean(F.cosine_similarity(u_online, i_target, dim=-1)) +
                  batch.mean(F.cosine_similarity(i_online, u_target, dim=-1))) / 2
        reg = self.config.reg_weight * 0.5 * batch.sum(u.pow(2).sum(-1) +
                                                       i.pow(2).sum(-1))
        return {'total': align + reg, 'align': align, 'reg': reg}
