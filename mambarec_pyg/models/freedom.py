r"""FREEDOM (`"A Tale of Two Graphs: Freezing and Denoising Graph Structures for
Multimodal Recommendation" <https://arxiv.org/abs/2211.06924>`_, Zhou & Shen, ACM MM
2023), as MMRec computes it (``src/models/freedom.py``, identical in the official
``enoche/FREEDOM``; ../BASELINES.md §3.7).

**Frozen item-item graph.** Per modality :math:`m`, the binary kNN graph of the raw
features (:class:`~mambarec_pyg.data.transforms.ItemKNN` with
``weighting='binary'``: top-``knn_k`` cosine neighbours, the item itself included,
sym-normalised with row degrees, so every entry is :math:`1/k`), mixed once at
construction:

.. math::
    \mathbf{S} = \sum_m \alpha_m \mathbf{S}_m, \qquad
    \alpha_{\mathrm{image}} = w, \quad \alpha_{m \ne \mathrm{image}} =
    \frac{1 - w}{M - 1},

with :math:`w` = ``mm_image_weight`` (0.1). With the paper's two modalities this is
MMRec's :math:`0.1\,\mathbf{S}_v + 0.9\,\mathbf{S}_t`; with one modality
:math:`\mathbf{S}` is its graph; with several and none named ``'image'`` they weigh
equally (:math:`1/M` each). The graph is never rebuilt, although the features train.

**Degree-sensitive edge pruning** (:meth:`FREEDOM.on_epoch_start`, every epoch). Of
the :math:`|E|` distinct training pairs, :math:`\lfloor |E| (1 - p) \rfloor`
(``p`` = ``dropout``; at least one) are drawn without replacement with probability
proportional to :math:`1/\sqrt{d_u d_i}` (:func:`torch.multinomial`), so edges between
high-degree nodes are dropped more often. The kept bipartite graph is re-normalised,
:math:`\tilde w_{ui} = 1/\sqrt{(\tilde d_u + 10^{-7})(\tilde d_i + 10^{-7})}` with the
kept degrees :math:`\tilde d`, and mirrored into the :math:`(U+N)^2` adjacency
:math:`\tilde{\mathbf{A}}`. Training-mode forwards propagate on
:math:`\tilde{\mathbf{A}}`; eval mode (evaluation, serving) on the full normalised
:math:`\hat{\mathbf{A}}`. The draw uses a :class:`torch.Generator` seeded from the
global torch RNG, so a seeded run repeats and a resumed run (which restores the
global RNG) draws the same graphs.

**Forward and score.**

.. math::
    \mathbf{h} = \mathbf{S}^{L_{mm}} \mathbf{E}_i, \qquad
    [\mathbf{e}_u; \mathbf{e}_i] = \frac{1}{L_{ui}+1}\sum_{l=0}^{L_{ui}}
    \tilde{\mathbf{A}}^l [\mathbf{E}_u; \mathbf{E}_i], \qquad
    \hat y_{ui} = \mathbf{e}_u^\top (\mathbf{e}_i + \mathbf{h}_i),

with ``n_mm_layers`` :math:`L_{mm} = 1` and ``n_ui_layers`` :math:`L_{ui} = 2`. The
modality features are not in the score.

**Loss.**

.. math::
    \mathcal{L} = \mathrm{BPR}(\mathbf{e}_u, \mathbf{e}_{i^+} + \mathbf{h}_{i^+},
    \mathbf{e}_{i^-} + \mathbf{h}_{i^-}) + \lambda \sum_m
    \mathrm{BPR}\big(\mathbf{e}_u, T_m(\mathbf{X}_m)_{i^+},
    T_m(\mathbf{X}_m)_{i^-}\big),

:math:`\mathrm{BPR}` the batch mean of :math:`-\log\sigma(\cdot)`, :math:`T_m` a
``Linear(D_m -> d)`` (PyTorch's default initialisation) and :math:`\mathbf{X}_m` the
**trainable** raw features (MMRec's ``nn.Embedding.from_pretrained(freeze=False)``);
:math:`\lambda` = ``reg_weight``. MMRec's sum over text and image is the sum over the
modalities here. :math:`\mathbf{E}_u, \mathbf{E}_i` are Xavier-uniform.

The projections :math:`T_m` run on the whole feature tables, as in MMRec: the
gradient of a trainable table is dense anyway, and at Baby scale one whole-table
product costs less than gathering the batch's rows and scattering their gradient back.

On several processes (:mod:`~mambarec_pyg.train.distributed`) both BPR terms are
means over the global batch (``batch.mean``); the pruned graph is drawn from the
global RNG over all edges, so every process draws the same one.

Where this differs from MMRec (no difference in what is learned):

* The sampling weights are the normalised training weights of
  :class:`~mambarec_pyg.data.transforms.UserItemNorm` (without MMRec's :math:`10^{-7}`
  on the degrees, a relative change below :math:`10^{-7}`); the pruned graph adds it.
* MMRec's unused options (``lambda_coeff``, ``weight_size``, ``cf_model``,
  ``degree_ratio``) are not exposed; ``feat_embed_dim`` is ``embedding_size`` (both
  64 in MMRec, and the modality BPR needs them equal).
* With ``reg_weight`` 0 the modality terms are not computed: MMRec computes them
  and backpropagates zeros, and Adam without weight decay (the protocol) leaves the
  features and projections unchanged either way.
* A training-mode forward before the first :meth:`~FREEDOM.on_epoch_start` uses the
  full graph (MMRec's trainer always prunes first).

The equations above are MMRec's code, the reference for the published numbers.
MMRec's yaml gives only a grid for ``dropout`` and ``reg_weight``; the defaults here
are dropout 0.8 (the milder pruning of the grid) and reg_weight 1e-4 (the middle of
its non-zero values).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ..config import ConfigError, ModelConfig, check_positive_int, check_range
from ..data.graphs import sparse_from_edges
from ..data.sampling import BPRBatch
from ..data.transforms import ItemKNN, UserItemNorm
from ..nn.conv import LightGCNPropagation, WeightedPropagation
from ..nn.losses import bpr_loss
from ..nn.pruning import DegreeSensitivePruning
from .base import Recommender, SparseGraphs, feature_table, user_item_matrices
from .registry import register

__all__ = ['FREEDOM', 'FREEDOMConfig', 'modality_weights', 'mixed_item_graph']

#: MMRec's degree epsilon of the re-normalised pruned graph.
_DEGREE_EPS = 1e-7


@dataclass
class FREEDOMConfig(ModelConfig):
    """FREEDOM (MMRec's ``FREEDOM.yaml``)."""

    #: raw feature tables are trainable parameters (as released); false freezes
    #: them (no gradient and no optimizer state: a third of their memory at
    #: most, and the frozen tables share the data's memory).
    trainable_features: bool = True
    #: width d of the ID embeddings and of the modality projections.
    embedding_size: int = 64
    #: hops L_mm of the frozen item-item graph (h = S^L_mm E_i).
    n_mm_layers: int = 1
    #: LightGCN layers L_ui on the (pruned) user-item graph; the layer mean is used.
    n_ui_layers: int = 2
    #: neighbours per item in each modality's kNN graph (the item itself included).
    knn_k: int = 10
    #: weight of the 'image' graph in the mixed item-item graph; the other modalities
    #: share the rest equally (one modality: its graph alone; several, none named
    #: 'image': equal weights).
    mm_image_weight: float = 0.1
    #: share p of the training edges pruned each epoch (floor(|E| (1 - p)) kept,
    #: drawn with probability proportional to 1/sqrt(d_u d_i)); 0 keeps all. MMRec's
    #: grid is [0.8, 0.9]; the default here is 0.8.
    dropout: float = 0.8
    #: weight lambda of the modality BPR terms BPR(e_u, T_m(x_m)+, T_m(x_m)-). MMRec's
    #: grid is [0, 1e-5, 1e-4, 1e-3]; the default here is 1e-4.
    reg_weight: float = 1e-4

    GRID: ClassVar[Dict[str, list]] = {
        'model.dropout': [0.8, 0.9],
        'model.reg_weight': [0.0, 1e-5, 1e-4, 1e-3],
    }

    def __post_init__(self) -> None:
        check_positive_int('model.embedding_size', self.embedding_size)
        check_positive_int('model.knn_k', self.knn_k)
        for name in ('n_mm_layers', 'n_ui_layers'):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f'model.{name}: expected an integer >= 0, got '
                                  f'{value!r}')
        check_range('model.mm_image_weight', self.mm_image_weight, 0.0, 1.0)
        check_range('model.dropout', self.dropout, 0.0, 1.0, high_open=True)
        check_range('model.reg_weight', self.reg_weight, 0.0)


def modality_weights(modalities, image_weight: float) -> Dict[str, float]:
    """FREEDOM's mixing weight of each modality's item-item graph: ``'image'`` gets
    ``image_weight`` and the others share ``1 - image_weight`` equally; one modality
    gets 1; several without ``'image'`` get ``1 / M`` each."""
    modalities = tuple(modalities)
    if len(modalities) == 1:
        return {modalities[0]: 1.0}
    if 'image' not in modalities:
        return {m: 1.0 / len(modalities) for m in modalities}
    rest = (1.0 - image_weight) / (len(modalities) - 1)
    return {m: image_weight if m == 'image' else rest for m in modalities}


def mixed_item_graph(data, modalities, knn_k: int, image_weight: float,
                     dtype: Optional[torch.dtype] = None) -> Tensor:
    r""":math:`\mathbf{S} = \sum_m \alpha_m \mathbf{S}_m` as one CSR matrix (rows
    are targets): the sparse sum of the binary kNN graphs of ``data``
    (:class:`~mambarec_pyg.data.transforms.ItemKNN` with ``weighting='binary'``,
    ``k = knn_k``) with the weights of :func:`modality_weights` (FREEDOM's and
    DRAGON's frozen item-item graph)."""
    knn = ItemKNN(knn_k, 'binary')
    weights = modality_weights(modalities, image_weight)
    edges, values = [], []
    for m in modalities:
        store = data[knn.edge_type(m)]
        edges.append(store.edge_index.cpu())
        values.append(weights[m] * store.edge_weight.cpu().double())
    n = int(data['item'].num_nodes)
    return sparse_from_edges(torch.cat(edges, dim=1), torch.cat(values), (n, n),
                             dtype=dtype or torch.get_default_dtype(), layout='csr')


@register('freedom')
class FREEDOM(Recommender):
    """FREEDOM: a frozen item-item graph and a degree-pruned user-item graph (see the
    module docstring)."""

    config_class = FREEDOMConfig
    min_modalities = 1
    stochastic_training = True
    reference = ('Zhou & Shen, "A Tale of Two Graphs: Freezing and Denoising Graph '
                 'Structures for Multimodal Recommendation", ACM MM 2023')

    @classmethod
    def graph_transforms(cls, config) -> List:
        return [UserItemNorm(), ItemKNN(config.knn_k, 'binary')]

    def __init__(self, data, config: Optional[FREEDOMConfig] = None) -> None:
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
        self.item_view = WeightedPropagation()
        self.propagation = LightGCNPropagation(c.n_ui_layers)

        self.graphs = SparseGraphs()
        adj, r_hat = user_item_matrices(data)
        self.graphs.set('adj', adj, transpose=False)  # symmetric
        self.graphs.set('item_graph', self._mixed_item_graph(data, dtype))
        # The distinct training pairs and their sampling weights 1/sqrt(d_u d_i).
        self.pruning = DegreeSensitivePruning(r_hat, c.dropout, _DEGREE_EPS)
        self.reset_parameters()
        device = data['user', 'interacts', 'item'].edge_index.device
        if device.type != 'cpu':
            self.to(device)

    def _mixed_item_graph(self, data, dtype: torch.dtype) -> Tensor:
        return mixed_item_graph(data, self.modalities, self.config.knn_k,
                                self.config.mm_image_weight, dtype)

    def reset_parameters(self) -> None:
        """Xavier-uniform ID embeddings, PyTorch's default for the projections (the
        feature tables keep their current values)."""
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        for m in self.modalities:
            self.projections[m].reset_parameters()

    # -- degree-sensitive edge pruning -------------------------------------------------
    def on_epoch_start(self, epoch: int) -> None:
        """Prune the user-item graph for this epoch (:attr:`pruning`; the generator's
        seed is drawn from the global torch RNG)."""
        if self.config.dropout <= 0.0:
            return None
        self.graphs.set('pruned', self.pruning(self.user_embedding.weight.dtype),
                        transpose=False)
        return None

    # -- forward and loss --------------------------------------------------------------
    def user_item_graph(self) -> Tensor:
        """The graph of the current mode: the pruned one in training mode (once
        pruned), the full one in eval mode."""
        if self.training and 'pruned' in self.graphs:
            return self.graphs['pruned']
        return self.graphs['adj']

    def item_item_view(self) -> Tensor:
        r""":math:`\mathbf{h} = \mathbf{S}^{L_{mm}}\mathbf{E}_i`."""
        h = self.item_embedding.weight
        for _ in range(self.config.n_mm_layers):
            h = self.item_view(h, self.graphs['item_graph'],
                               transpose=self.graphs['item_graph_t'])
        return h

    def embed(self) -> Tuple[Tensor, Tensor]:
        x = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        out = self.propagation(x, self.user_item_graph())
        return out[:self.num_users], out[self.num_users:] + self.item_item_view()

    def project(self, modality: str) -> Tensor:
        """:math:`T_m(\\mathbf{X}_m)` ``[N, d]``."""
        return self.projections[modality](self.features[modality])

    def loss(self, batch: BPRBatch) -> Dict[str, Tensor]:
        users, pos, neg = batch
        user, item = self.embed()
        u = user[users]
        bpr = bpr_loss((u * item[pos]).sum(-1), (u * item[neg]).sum(-1), batch)
        if self.config.reg_weight == 0.0:
            # The modality terms would only add zero gradients.
            return {'total': bpr, 'bpr': bpr}
        modal = bpr.new_zeros(())
        for m in self.modalities:
            t = self.project(m)
            modal = modal + bpr_loss((u * t[pos]).sum(-1), (u * t[neg]).sum(-1),
                                     batch)
        total = bpr + self.config.reg_weight * modal
        return {'total': total, 'bpr': bpr, 'modality_bpr': modal}
