r"""MMGCF (`"Multimodal Graph Collaborative Filtering for Recommendation with Graph
Convolutional Networks" <https://dl.acm.org/doi/abs/10.1145/3774935.3806158>`_,
Spillo et al., UMAP 2026), as MMRec computes it (``src/models/mmgcf.py``, MMRec's
latest model): LightGCN on the user-item graph, late-fused with the projected item
features.

**Encoder.** The LightGCN layer mean on the normalised user-item graph,

.. math::
    [\mathbf{e}_u; \mathbf{e}_i] = \frac{1}{L+1}\sum_{l=0}^{L}\tilde{\mathbf{A}}^l
    [\mathbf{E}_u; \mathbf{E}_i] \qquad (L = \texttt{n\_ui\_layers}),

where :math:`\tilde{\mathbf{A}}` is, in training mode, the graph of this epoch's
degree-sensitive edge dropout (FREEDOM's:
:class:`~mambarec_pyg.nn.pruning.DegreeSensitivePruning` keeps
:math:`\lfloor |E|(1 - p)\rfloor` edges drawn with probability proportional to
:math:`1/\sqrt{d_u d_i}` and re-normalises them; ``dropout`` = :math:`p`, 0 keeps
the full graph) and in eval mode the full normalised graph :math:`\hat{\mathbf{A}}`.

**Late fusion.** With the **frozen** raw features projected,
:math:`\mathbf{f}_m = \mathrm{Lin}_m(\mathbf{X}_m)` (:math:`D_m \to d_f`), and
:math:`\Phi` the fusion (``fusion_mode``: ``'mean'`` or ``'sum'`` of its inputs,
or ``'concat'``: a linear layer on their concatenation), the item embedding is
(``weighting``)

.. math::
    \text{equal:}\;\; \Phi(\mathbf{e}_i, \Phi_{mm}(\mathbf{f}_1, \dots, \mathbf{f}_M)),
    \quad
    \text{alpha:}\;\; \Phi(\alpha\mathbf{e}_i, (1-\alpha)\mathbf{f}_1, \dots),
    \quad
    \text{normalized:}\;\; \Phi(M\,\bar{\mathbf{e}}_i, \bar{\mathbf{f}}_1, \dots),

with :math:`\alpha = \sigma(a)` for a trainable scalar :math:`a` (initially 0),
:math:`\bar{\cdot}` row-wise L2 normalisation, and :math:`\Phi_{mm}` the identity for
one modality. ``'concat'`` has its own layer for each use: :math:`[\mathbf{f}_1,
\dots] \to d_f` (equal, several modalities), :math:`[\mathbf{e}_i, \cdot] \to d`
(equal) and :math:`[\mathbf{e}_i, \mathbf{f}_1, \dots] \to d` (alpha, normalized).
Users keep :math:`\mathbf{e}_u`; scores are inner products. Without item features
the model is LightGCN with edge dropout.

**Loss.**

.. math::
    \mathcal{L} = \mathrm{BPR} + \frac{\lambda}{2B}\sum_{b}\big(
    \|\mathbf{E}_u[u_b]\|^2 + \|\mathbf{E}_i[i_b]\|^2 + \|\mathbf{E}_i[j_b]\|^2\big)

on the **initial** ID embeddings, :math:`B` the number of triples in the batch
(MMRec divides by ``len(users)``, so a short last batch by its own length).

**Where this differs from MMRec** (nothing that changes what is learned): at least
one edge is kept (MMRec's ``torch.multinomial`` fails on zero); ``feat_embed_dim``
must equal ``embedding_size`` unless ``fusion_mode = 'concat'`` (MMRec documents
the requirement and fails at run time); the unused concatenation layers MMRec
creates are not created; a training-mode forward before the first
:meth:`~MMGCF.on_epoch_start` uses the full graph (MMRec's trainer always drops
edges first). The projections run on the whole feature tables, as in MMRec.

**Defaults.** MMRec's yaml gives grids only (``n_ui_layers`` [1, 2, 3],
``reg_weight`` [0.1, 0.01, 0.001, 1e-4], ``fusion_mode`` [mean, sum, concat],
``weighting`` [equal, alpha, normalized], ``dropout`` [0.2, 0.5, 0.8]; 324 runs,
:attr:`MMGCFConfig.GRID`). The defaults are the grids' middle values where they
have one (``n_ui_layers = 2``, ``dropout = 0.5``), ``reg_weight = 1e-3`` (of the two
middle values, the weaker penalty, as LightGCN's usual choice), ``fusion_mode =
'mean'`` (the yaml's first) and ``weighting = 'equal'`` (the yaml's "recommended
default").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear

from ..config import (ConfigError, ModelConfig, check_choice, check_nonnegative_int,
                     check_positive_int, check_range)
from ..data.index import UI
from ..data.sampling import BPRBatch
from ..data.transforms import UserItemNorm
from ..nn.conv import LightGCNPropagation
from ..nn.losses import bpr_loss
from ..nn.pruning import DegreeSensitivePruning
from .base import Recommender, SparseGraphs, user_item_matrices
from .registry import register

__all__ = ['MMGCF', 'MMGCFConfig']

FUSION_MODES = ('mean', 'sum', 'concat')
WEIGHTINGS = ('equal', 'alpha', 'normalized')


@dataclass
class MMGCFConfig(ModelConfig):
    """MMGCF (MMRec's ``MMGCF.yaml``; defaults: see the module docstring)."""

    #: width d of the user and item ID embeddings.
    embedding_size: int = 64
    #: width d_f of the projected item features (must equal embedding_size unless
    #: fusion_mode is 'concat').
    feat_embed_dim: int = 64
    #: LightGCN layers on the user-item graph (layer mean).
    n_ui_layers: int = 2
    #: weight of the L2 penalty on the batch's initial ID embeddings (divided by 2B).
    reg_weight: float = 1e-3
    #: how embeddings are combined: 'mean', 'sum' or 'concat' (a linear layer on the
    #: concatenation).
    fusion_mode: str = 'mean'
    #: how the ID embedding is weighed against the features: 'equal' (modalities
    #: fused first, then with the ID embedding), 'alpha' (a learnt sigmoid gate) or
    #: 'normalized' (L2-normalised, the ID embedding times the number of modalities).
    weighting: str = 'equal'
    #: share p of the training edges dropped each epoch (degree-sensitive); 0 keeps
    #: the full graph.
    dropout: float = 0.5

    #: MMRec's grid (324 runs).
    GRID: ClassVar[Dict[str, list]] = {
        'model.n_ui_layers': [1, 2, 3],
        'model.reg_weight': [1e-1, 1e-2, 1e-3, 1e-4],
        'model.fusion_mode': ['mean', 'sum', 'concat'],
        'model.weighting': ['equal', 'alpha', 'normalized'],
        'model.dropout': [0.2, 0.5, 0.8],
    }

    def __post_init__(self) -> None:
        check_positive_int('model.embedding_size', self.embedding_size)
        check_positive_int('model.feat_embed_dim', self.feat_embed_dim)
        check_nonnegative_int('model.n_ui_layers', self.n_ui_layers)
        check_range('model.reg_weight', self.reg_weight, 0.0)
        check_range('model.dropout', self.dropout, 0.0, 1.0, high_open=True)
        check_choice('model.fusion_mode', self.fusion_mode, FUSION_MODES)
        check_choice('model.weighting', self.weighting, WEIGHTINGS)
        if self.fusion_mode != 'concat' and self.feat_embed_dim != self.embedding_size:
            raise ConfigError(f'model.feat_embed_dim: must equal model.embedding_size '
                              f'({self.embedding_size}) unless model.fusion_mode is '
                              f"'concat', got {self.feat_embed_dim}")


@register('mmgcf')
class MMGCF(Recommender):
    r"""MMGCF (see the module docstring for the equations).

    Args:
        data (HeteroData): the dataset (any number of item feature tables, frozen).
        config (MMGCFConfig, optional): the model's options.
    """

    config_class = MMGCFConfig
    min_modalities = 0
    stochastic_training = True  # edge dropout
    reference = ('Spillo et al., "Multimodal Graph Collaborative Filtering for '
                 'Recommendation with Graph Convolutional Networks", UMAP 2026')

    @classmethod
    def graph_transforms(cls, config) -> List:
        return [UserItemNorm()]

    def __init__(self, data, config: Optional[MMGCFConfig] = None) -> None:
        super().__init__(data, config)
        data = self.prepare(data, self.config)
        c = self.config
        d, df, M = c.embedding_size, c.feat_embed_dim, len(self.modalities)
        dtype = torch.get_default_dtype()
        self.user_embedding = torch.nn.Embedding(self.num_users, d)
        self.item_embedding = torch.nn.Embedding(self.num_items, d)
        # Frozen raw features: buffers, rebuilt from the data (not in the state dict).
        for m in self.modalities:
            self.register_buffer(f'feature_{m}',
                                 data['item'][m].detach().cpu().to(dtype).clone(),
                                 persistent=False)
        self.projections = torch.nn.ModuleDict({
            m: Linear(data['item'][m].size(1), df) for m in self.modalities})
        self.mm_alpha = torch.nn.Parameter(torch.zeros(())) \
            if c.weighting == 'alpha' and M else None
        self.concat = torch.nn.ModuleDict()
        if c.fusion_mode == 'concat' and M:
            if c.weighting == 'equal':
                if M > 1:
                    self.concat['modalities'] = Linear(M * df, df)
                self.concat['id_modalities'] = Linear(d + df, d)
            else:
                self.concat['all'] = Linear(d + M * df, d)
        self.propagation = LightGCNPropagation(c.n_ui_layers)
        self.graphs = SparseGraphs()
        adj, r_hat = user_item_matrices(data)
        self.graphs.set('adj', adj, transpose=False)  # symmetric
        self.pruning = DegreeSensitivePruning(r_hat, c.dropout)
        self.reset_parameters()
        device = data[UI].edge_index.device
        if device.type != 'cpu':
            self.to(device)

    def reset_parameters(self) -> None:
        """Xavier-uniform ID embeddings, PyTorch's defaults for the linear layers,
        :math:`a = 0` (:math:`\\alpha = 0.5`)."""
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        for layer in [*self.projections.values(), *self.concat.values()]:
            layer.reset_parameters()
        if self.mm_alpha is not None:
            torch.nn.init.zeros_(self.mm_alpha)

    # -- edge dropout ------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        """Draw this epoch's pruned graph (seeded from the global torch RNG)."""
        if self.config.dropout > 0.0:
            self.graphs.set('pruned', self.pruning(self.user_embedding.weight.dtype),
                            transpose=False)
        return None

    def user_item_graph(self) -> Tensor:
        """The pruned graph in training mode (once drawn), the full one in eval
        mode."""
        if self.training and 'pruned' in self.graphs:
            return self.graphs['pruned']
        return self.graphs['adj']

    # -- forward -----------------------------------------------------------------------
    def _fuse(self, tensors: List[Tensor], layer: Optional[str]) -> Tensor:
        mode = self.config.fusion_mode
        if mode == 'mean':
            return torch.stack(tensors).mean(dim=0)
        if mode == 'sum':
            return torch.stack(tensors).sum(dim=0)
        return self.concat[layer](torch.cat(tensors, dim=-1))

    def fuse_items(self, item: Tensor) -> Tensor:
        """The late fusion of the propagated item embeddings with the projected
        features (``item``: ``[N, d]``)."""
        feats = [self.projections[m](getattr(self, f'feature_{m}'))
                 for m in self.modalities]
        if not feats:
            return item
        weighting = self.config.weighting
        if weighting == 'alpha':
            alpha = torch.sigmoid(self.mm_alpha)
            return self._fuse([item * alpha] + [f * (1.0 - alpha) for f in feats],
                              'all')
        if weighting == 'normalized':
            return self._fuse([F.normalize(item, dim=1) * len(feats)] +
                              [F.normalize(f, dim=1) for f in feats], 'all')
        mm = self._fuse(feats, 'modalities') if len(feats) > 1 else feats[0]
        return self._fuse([item, mm], 'id_modalities')

    def embed(self) -> Tuple[Tensor, Tensor]:
        x = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        out = self.propagation(x, self.user_item_graph())
        user, item = out.split([self.num_users, self.num_items])
        return user, self.fuse_items(item)

    def loss(self, batch: BPRBatch) -> Dict[str, Tensor]:
        """``{'total', 'bpr', 'reg'}`` (``reg`` weighted)."""
        users, pos, neg = batch
        user, item = self.embed()
        u = user[users]
        bpr = bpr_loss((u * item[pos]).sum(-1), (u * item[neg]).sum(-1), batch)
        squares = (self.user_embedding(users).square().sum(-1) +
                   self.item_embedding(pos).square().sum(-1) +
                   self.item_embedding(neg).square().sum(-1))
        reg = self.config.reg_weight * batch.mean(squares) / 2
        return {'total': bpr + reg, 'bpr': bpr, 'reg': reg}
