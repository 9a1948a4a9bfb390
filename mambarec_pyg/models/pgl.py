r"""PGL (`"Mind Individual Information! Principal Graph Learning for Multimedia
Recommendation" <https://github.com/demonph10/PGL>`_, Yu et al., AAAI 2025), as
MMRec computes it (``src/models/pgl.py``, identical to the official
``demonph10/PGL``).

PGL trains on a *principal* subgraph of the user-item graph and scores on the full
one. Its embeddings are the modality features themselves: there are no item ID
embeddings.

**Embeddings.** Per modality :math:`m`, the trainable raw features
:math:`\mathbf{X}_m` (MMRec's ``from_pretrained(freeze=False)``) are projected and
L2-normalised row-wise, and each user has one embedding per modality:

.. math::
    \mathbf{I}^0 = [\bar{\mathbf{T}}_1 \,\|\, \dots \,\|\, \bar{\mathbf{T}}_M], \quad
    \bar{\mathbf{T}}_m = \mathrm{norm}(\mathrm{Lin}_m(\mathbf{X}_m)), \qquad
    \mathbf{U}^0 = [\mathbf{U}_1 \,\|\, \dots \,\|\, \mathbf{U}_M]

(width :math:`M d`; the concatenation in the order of ``data.modalities``).

**Forward.** With FREEDOM's frozen item-item graph :math:`\mathbf{S}`
(:func:`~mambarec_pyg.models.freedom.mixed_item_graph`: binary kNN graphs mixed
with ``mm_image_weight``) and :math:`\mathbf{G}` the user-item graph of the current
mode,

.. math::
    \mathbf{h} = \mathbf{S}^{L_{mm}}\mathbf{I}^0, \quad
    [\mathbf{e}_u; \mathbf{e}_i] = \frac{1}{L+1}\sum_{l=0}^{L}\mathbf{G}^l
    [\mathbf{U}^0; \mathbf{I}^0], \quad
    \hat y_{ui} = \mathbf{e}_u^\top(\mathbf{e}_i + \mathbf{h}_i).

:math:`\mathbf{G}` is the full normalised graph :math:`\hat{\mathbf{A}}` in eval
mode (evaluation, serving) and the principal subgraph in training mode (``mode``):

* ``'local'`` (MMRec's default): FREEDOM's degree-sensitive pruning, redrawn every
  epoch (:class:`~mambarec_pyg.nn.pruning.DegreeSensitivePruning`):
  :math:`\lfloor 0.3\,|E|\rfloor` edges (``keep_rate``, PGL fixes 0.3) drawn without
  replacement with probability proportional to :math:`1/\sqrt{d_u d_i}`,
  re-normalised;
* ``'global'``: the fixed low-rank rebuild
  :math:`\mathbf{P} = \sum_{i \le n} s_i s_{r-n+i}\mathbf{u}_i\mathbf{v}_i^\top`
  from the :math:`r` = ``svd_rank`` leading singular triplets of
  :math:`\hat{\mathbf{A}}`, :math:`n = r/4`, entries below :math:`10^{-3}` dropped
  (:class:`~mambarec_pyg.data.transforms.PrincipalGraph`).

**Loss.**

.. math::
    \mathcal{L} = \mathrm{BPR}(\mathbf{e}_u, \mathbf{e}_{i^+} + \mathbf{h}_{i^+},
    \mathbf{e}_{i^-} + \mathbf{h}_{i^-}) + \frac{\lambda}{2}\big(
    \mathrm{InfoNCE}(\delta(\mathbf{E}_u), \delta'(\mathbf{E}_u)) +
    \mathrm{InfoNCE}(\delta(\mathbf{E}_{i^+}), \delta'(\mathbf{E}_{i^+}))\big)

with :math:`\mathbf{E}_u` the batch's user rows and :math:`\mathbf{E}_{i^+}` its
positive item rows (:math:`\mathbf{e}_i + \mathbf{h}_i`), :math:`\delta,
\delta'` two independent dropout draws (``dropout``) and temperature 0.2
(:func:`~mambarec_pyg.nn.info_nce`, in-batch negatives): a SimCSE-like term that
spreads the embeddings. :math:`\lambda` = ``cl_weight`` (MMRec's ``reg_weight``).

**More or fewer modalities.** MMRec's code is written for image and text; here every
modality contributes its block of :math:`d` columns, and the item graph mixes the
modalities as FREEDOM does (one modality: its graph alone).

**Where this differs from MMRec** (nothing that changes what is learned):

* The normalised graphs carry no :math:`10^{-7}` on the degrees (relative change
  below :math:`10^{-7}`; the pruned graph keeps it), and the item graph is
  :class:`~mambarec_pyg.data.transforms.ItemKNN`'s (ties to the lower id).
* The global graph's singular triplets come from the eigenpairs of the symmetric
  :math:`\hat{\mathbf{A}}` (scipy's ``eigsh``; PGL calls the ``sparsesvd``
  package): the same :math:`\mathbf{P}` wherever the rank cuts do not split a
  repeated singular value.
* With ``cl_weight = 0`` the contrastive term (and its dropout draws) is not
  computed; MMRec computes it and multiplies by 0.
* A training-mode forward before the first :meth:`~PGL.on_epoch_start` in local mode
  uses the full graph (MMRec's trainer always prunes first).
* MMRec's unused options (``lambda_coeff``, ``weight_size``) are not exposed;
  ``feat_embed_dim`` is ``embedding_size`` (they must be equal, as the user and item
  blocks are propagated together).

**Defaults.** MMRec's yaml sets ``reg_weight: [0]``, which switches the contrastive
term off; the official PGL logs train Baby with ``reg_weight = 0.05`` and
``dropout = 0.2`` (local), Sports with 0.1 / 0.05 and Clothing with 0.5 / 0.1
(global and local). The defaults here are the Baby values, ``cl_weight = 0.05`` and
``dropout = 0.2``, in MMRec's local mode (``--model.cl-weight 0`` reproduces
MMRec's yaml). :data:`DATASET_DEFAULTS` has the three logged blocks;
:attr:`PGLConfig.GRID` searches their values, ``cl_weight`` [0.05, 0.1, 0.5] x
``dropout`` [0.05, 0.1, 0.2] (9 runs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Linear

from ..config import (ConfigError, ModelConfig, check_choice, check_nonnegative_int,
                     check_positive_int, check_range)
from ..data.index import UI
from ..data.sampling import BPRBatch
from ..data.transforms import ItemKNN, PrincipalGraph, UserItemNorm
from ..nn.conv import LightGCNPropagation, WeightedPropagation
from ..nn.losses import bpr_loss, info_nce
from ..nn.pruning import DegreeSensitivePruning
from .base import Recommender, SparseGraphs, feature_table, user_item_matrices
from .freedom import mixed_item_graph
from .registry import register

__all__ = ['PGL', 'PGLConfig', 'DATASET_DEFAULTS']

#: The official PGL logs' settings per dataset (Baby's are the defaults).
DATASET_DEFAULTS: Dict[str, Dict[str, Any]] = {
    'baby': {'model.mode': 'local', 'model.cl_weight': 0.05, 'model.dropout': 0.2},
    'sports': {'model.mode': 'global', 'model.cl_weight': 0.1, 'model.dropout': 0.05},
    'clothing': {'model.mode': 'global', 'model.cl_weight': 0.5,
                 'model.dropout': 0.1},
}


@dataclass
class PGLConfig(ModelConfig):
    """PGL (MMRec's ``PGL.yaml``; defaults: the official Baby log)."""

    #: raw feature tables are trainable parameters (as released); false freezes
    #: them (no gradient and no optimizer state: a third of their memory at
    #: most, and the frozen tables share the data's memory).
    trainable_features: bool = True
    #: width d of each modality's user embeddings and projected features.
    embedding_size: int = 64
    #: LightGCN layers on the user-item graph (layer mean).
    n_ui_layers: int = 2
    #: hops L_mm of the frozen item-item graph.
    n_mm_layers: int = 1
    #: neighbours per item in each modality's binary kNN graph (itself included).
    knn_k: int = 10
    #: weight of the 'image' graph in the mixed item-item graph (FREEDOM's rule).
    mm_image_weight: float = 0.1
    #: the principal subgraph trained on: 'local' (degree-sensitive pruning, redrawn
    #: every epoch) or 'global' (low-rank rebuild of the adjacency).
    mode: str = 'local'
    #: share of the training edges kept by the local pruning (PGL fixes 0.3).
    keep_rate: float = 0.3
    #: singular triplets of the global principal graph (PGL: the embedding size).
    svd_rank: int = 64
    #: weight of the dropout-InfoNCE term (MMRec's ``reg_weight``; its yaml: 0).
    cl_weight: float = 0.05
    #: dropout of the two InfoNCE views.
    dropout: float = 0.2

    #: ``cl_weight`` x ``dropout`` over the official logs' values.
    GRID: ClassVar[Dict[str, list]] = {
        'model.cl_weight': [0.05, 0.1, 0.5],
        'model.dropout': [0.05, 0.1, 0.2],
    }

    def __post_init__(self) -> None:
        for name in ('embedding_size', 'knn_k', 'svd_rank'):
            check_positive_int(f'model.{name}', getattr(self, name))
        for name in ('n_ui_layers', 'n_mm_layers'):
            check_nonnegative_int(f'model.{name}', getattr(self, name))
        check_choice('model.mode', self.mode, ('local', 'global'))
        check_range('model.mm_image_weight', self.mm_image_weight, 0.0, 1.0)
        check_range('model.keep_rate', self.keep_rate, 0.0, 1.0, low_open=True)
        check_range('model.cl_weight', self.cl_weight, 0.0)
        check_range('model.dropout', self.dropout, 0.0, 1.0, high_open=True)
        if self.svd_rank < 4:
            raise ConfigError(f'model.svd_rank: expected at least 4 (a quarter of it '
                              f'is paired), got {self.svd_rank!r}')


@register('pgl')
class PGL(Recommender):
    r"""PGL (see the module docstring for the equations).

    Args:
        data (HeteroData): the dataset, with at least one item feature table.
        config (PGLConfig, optional): the model's options.
    """

    config_class = PGLConfig
    min_modalities = 1
    stochastic_training = True  # local pruning, dropout views
    reference = ('Yu et al., "Mind Individual Information! Principal Graph Learning '
                 'for Multimedia Recommendation", AAAI 2025')

    @classmethod
    def graph_transforms(cls, config) -> List:
        transforms = [UserItemNorm(), ItemKNN(config.knn_k, 'binary')]
        if config.mode == 'global':
            transforms.append(PrincipalGraph(config.svd_rank))
        return transforms

    def __init__(self, data, config: Optional[PGLConfig] = None) -> None:
        super().__init__(data, config)
        data = self.prepare(data, self.config)
        c = self.config
        d = c.embedding_size
        dtype = torch.get_default_dtype()
        self.user_embeddings = torch.nn.ModuleDict({
            m: torch.nn.Embedding(self.num_users, d) for m in self.modalities})
        self.features = torch.nn.ParameterDict({
            m: feature_table(data['item'][m], dtype, c.trainable_features)
            for m in self.modalities})
        self.projections = torch.nn.ModuleDict({
            m: Linear(self.features[m].size(1), d) for m in self.modalities})
        self.item_view = WeightedPropagation()
        self.propagation = LightGCNPropagation(c.n_ui_layers)

        self.graphs = SparseGraphs()
        adj, r_hat = user_item_matrices(data)
        self.graphs.set('adj', adj, transpose=False)  # symmetric
        self.graphs.set('item_graph', mixed_item_graph(
            data, self.modalities, c.knn_k, c.mm_image_weight, dtype))
        self.pruning = DegreeSensitivePruning(r_hat, 1.0 - c.keep_rate) \
            if c.mode == 'local' else None
        if c.mode == 'global':
            self.graphs.set('principal', PrincipalGraph(c.svd_rank).adjacency(
                data, dtype), transpose=False)  # symmetric
        self.reset_parameters()
        device = data[UI].edge_index.device
        if device.type != 'cpu':
            self.to(device)

    def reset_parameters(self) -> None:
        """Xavier-uniform user embeddings, PyTorch's default for the projections (the
        feature tables keep their values)."""
        for m in self.modalities:
            torch.nn.init.xavier_uniform_(self.user_embeddings[m].weight)
            self.projections[m].reset_parameters()

    # -- the principal subgraph --------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        """Local mode: draw this epoch's pruned graph (seeded from the global torch
        RNG)."""
        if self.pruning is not None:
            dtype = self.user_embeddings[self.modalities[0]].weight.dtype
            self.graphs.set('principal', self.pruning(dtype), transpose=False)
        return None

    def user_item_graph(self) -> Tensor:
        """The principal subgraph in training mode (once there), the full graph in
        eval mode."""
        if self.training and 'principal' in self.graphs:
            return self.graphs['principal']
        return self.graphs['adj']

    # -- forward and loss --------------------------------------------------------------
    def encode(self) -> Tuple[Tensor, Tensor, Tensor]:
        r"""``(e_u [U, Md], e_i [N, Md], h [N, Md])`` in the current mode."""
        items = torch.cat([F.normalize(self.projections[m](self.features[m]), dim=1)
                           for m in self.modalities], dim=1)
        users = torch.cat([self.user_embeddings[m].weight for m in self.modalities],
                          dim=1)
        h = items
        for _ in range(self.config.n_mm_layers):
            h = self.item_view(h, self.graphs['item_graph'],
                               transpose=self.graphs['item_graph_t'])
        out = self.propagation(torch.cat([users, items]), self.user_item_graph())
        user, item = out.split([self.num_users, self.num_items])
        return user, item, h

    def embed(self) -> Tuple[Tensor, Tensor]:
        user, item, h = self.encode()
        return user, item + h

    def loss(self, batch: BPRBatch) -> Dict[str, Tensor]:
        """``{'total', 'bpr', 'cl'}`` (``cl`` unweighted; left out with
        ``cl_weight = 0``)."""
        c = self.config
        users, pos, neg = batch
        user, item = self.embed()
        u, i = user[users], item[pos]
        bpr = bpr_loss((u * i).sum(-1), (u * item[neg]).sum(-1), batch)
        if c.cl_weight == 0.0:
            return {'total': bpr, 'bpr': bpr}
        # The InfoNCE terms couple the batch's rows: over the global batch, with
        # dropout masks drawn for all of its rows.
        gu, gi = batch.gather(u), batch.gather(i)
        drop = lambda x: F.dropout(x, c.dropout, self.training)  # noqa: E731
        cl = (info_nce(drop(gu), drop(gu), 0.2) + info_nce(drop(gi), drop(gi), 0.2)) / 2
        return {'total': bpr + c.cl_weight * cl, 'bpr': bpr, 'cl': cl}
