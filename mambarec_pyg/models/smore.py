r"""SMORE (`"Spectrum-based Modality Representation Fusion Graph Convolutional
Network for Multimodal Recommendation" <https://arxiv.org/abs/2412.14978>`_, Ong &
Khong, WSDM 2025), as MMRec computes it (``src/models/smore.py``, from the
official ``kennethorq/SMORE``).

SMORE keeps MGCN's layout (a LightGCN content view, item-item modality views, a
behaviour-aware combination and an InfoNCE term between them) and adds a fusion view
built in the frequency domain.

**Spectrum modality fusion.** The trainable raw features :math:`\mathbf{X}_m`
(MMRec's ``nn.Embedding.from_pretrained(freeze=False)``) are projected,
:math:`\mathbf{T}_m = \mathrm{Lin}_m(\mathbf{X}_m)` (:math:`D_m \to d`), and filtered
in the frequency domain (:class:`~mambarec_pyg.nn.spectral.SpectralFilter`):

.. math::
    \mathbf{C}_m = \mathcal{F}^{-1}(\mathcal{F}(\mathbf{T}_m) \odot \mathbf{w}_m),
    \qquad
    \mathbf{C}_f = \mathcal{F}^{-1}\big(\textstyle\prod_m \mathcal{F}(\mathbf{T}_m)
    \odot \mathbf{w}_f\big),

with :math:`\mathcal{F}` the orthonormal real FFT over the :math:`d` channels. Each
gates the item ID embeddings :math:`\mathbf{E}_i`:
:math:`\mathbf{G}_m = \mathbf{E}_i \odot \sigma(\mathbf{W}_m\mathbf{C}_m +
\mathbf{b}_m)`, :math:`\mathbf{G}_f = \mathbf{E}_i \odot \sigma(\mathbf{W}_f
\mathbf{C}_f + \mathbf{b}_f)`.

**Views.** The content view is the LightGCN layer mean on the normalised user-item
graph :math:`\hat{\mathbf{A}}` (:class:`~mambarec_pyg.data.transforms.UserItemNorm`),
:math:`\mathbf{c} = \frac{1}{L+1}\sum_{l=0}^{L}\hat{\mathbf{A}}^l[\mathbf{E}_u;
\mathbf{E}_i]` with :math:`L` = ``n_ui_layers``. Modality :math:`m` propagates on
its similarity-weighted kNN graph :math:`\mathbf{S}_m`
(:class:`~mambarec_pyg.data.transforms.ItemKNN`, ``k_m`` neighbours, MGCN's
weighting), the fusion view on the element-wise maximum of the modality graphs,

.. math::
    (\mathbf{S}_f)_{ij} = \max_{m:\, (\mathbf{S}_m)_{ij} \ne 0} (\mathbf{S}_m)_{ij}
    \quad \text{on the union of their edges},

each ``n_layers`` :math:`= L'` times, and users take the items through
:math:`\hat{\mathbf{R}}` (the user-item block of :math:`\hat{\mathbf{A}}`):
:math:`\mathbf{z}_m = [\hat{\mathbf{R}}\mathbf{S}_m^{L'}\mathbf{G}_m;
\mathbf{S}_m^{L'}\mathbf{G}_m]`, :math:`\mathbf{z}_f` likewise with
:math:`\mathbf{S}_f, \mathbf{G}_f`.

**Modality-aware preference.** Per modality a query
:math:`q_m = \mathrm{Lin}(d \to d, \text{no bias})\circ\tanh\circ\mathrm{Lin}(d \to
d)` of the fusion view weighs the modality view channel by channel, and gates of the
content view weigh every view:

.. math::
    \mathbf{a}_m = \mathrm{softmax}_{\mathrm{channels}}(q_m(\mathbf{z}_f)) \odot
    \mathbf{z}_m, \quad
    \mathrm{side} = \frac{1}{M + 1}\Big(\sum_m \delta(\sigma(\mathrm{Lin}'_m
    (\mathbf{c}))) \odot \mathbf{a}_m + \delta(\sigma(\mathrm{Lin}'_f(\mathbf{c})))
    \odot \mathbf{z}_f\Big),

with :math:`\delta` dropout (``dropout``, training mode only). The final embeddings
are :math:`\mathbf{c} + \mathrm{side}`; scores are inner products.

**Loss** (batch users :math:`u`, positives :math:`i`, negatives :math:`j`,
configured batch size :math:`B`):

.. math::
    \mathcal{L} = \mathrm{BPR} + \lambda_{reg}\frac{\|\mathbf{e}_u\|^2 +
    \|\mathbf{e}_i\|^2 + \|\mathbf{e}_j\|^2}{2B} + \lambda_{cl}\big(
    \mathrm{InfoNCE}(\mathrm{side}_i, \mathbf{c}_i) +
    \mathrm{InfoNCE}(\mathrm{side}_u, \mathbf{c}_u)\big)

on the final embeddings, with temperature 0.2 (:func:`~mambarec_pyg.nn.info_nce`,
in-batch negatives). Adam with the learning rate decayed by :math:`0.96^{e/50}`
(MMRec's ``learning_rate_scheduler: [0.96, 50]``).

**More or fewer modalities.** MMRec's code is written for image and text. Here each
modality of ``data.modalities`` has its filter, gate, graph, query and preference
gate; the fusion spectrum is the product of all modality spectra and the fusion graph
the maximum over all modality graphs. With one modality the fusion view is a second
filter of the same spectrum on the same graph.

**Where this differs from MMRec** (nothing that changes what is learned):

* The kNN graphs are :class:`~mambarec_pyg.data.transforms.ItemKNN`'s (ties broken
  towards the lower item id; an all-zero feature row gives similarity 0 instead of
  NaN); ``image_knn_k`` applies to the modality named ``'image'``, ``text_knn_k`` to
  ``'text'``, ``knn_k`` to any other.
* MMRec's unused options (``lambda_coeff``, the ``temperature`` key, which its loss
  ignores for a fixed 0.2) are not exposed; the InfoNCE temperature is
  ``cl_temperature`` (0.2).

**Defaults** are the official README's best values for Baby (MMRec's yaml gives a
grid): ``n_ui_layers = 4``, ``image_knn_k = 40``, ``text_knn_k = 15``,
``reg_weight = 1e-4``, ``dropout = 0.1``, with ``n_layers = 1``,
``cl_weight = 0.01``. :data:`DATASET_DEFAULTS` has the README's blocks for the three
datasets (to pass to ``Config.with_overrides``). :attr:`SMOREConfig.GRID` is MMRec's
grid: ``n_ui_layers`` [3, 4] x ``image_knn_k`` and ``text_knn_k`` [10, 15, 20, 40]
x ``reg_weight`` [1e-5, 1e-4] x ``dropout`` [0, 0.1] (128 runs).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Dict, List, NamedTuple, Optional, Tuple

import torch
from torch import Tensor
from torch.nn import Linear

from ..config import (ModelConfig, check_nonnegative_int, check_positive_int,
                     check_range)
from ..data.graphs import sparse_from_edges
from ..data.index import UI
from ..data.sampling import BPRBatch
from ..data.transforms import ItemKNN, UserItemNorm, apply_transforms
from ..nn.conv import LightGCNPropagation, WeightedPropagation
from ..nn.losses import bpr_loss, info_nce
from ..nn.spectral import SpectralFilter
from .base import (Recommender, SparseGraphs, edge_matrix, feature_table,
                   user_item_matrices)
from .registry import register

__all__ = ['SMORE', 'SMOREConfig', 'SMOREOutput', 'DATASET_DEFAULTS']

#: The official README's best values per dataset, as ``Config.with_overrides`` keys
#: (Baby's are the config's defaults).
DATASET_DEFAULTS: Dict[str, Dict[str, Any]] = {
    'baby': {'model.n_ui_layers': 4, 'model.image_knn_k': 40, 'model.text_knn_k': 15,
             'model.cl_weight': 0.01, 'model.reg_weight': 1e-4, 'model.dropout': 0.1},
    'sports': {'model.n_ui_layers': 3, 'model.image_knn_k': 10,
               'model.text_knn_k': 10, 'model.cl_weight': 0.03,
               'model.reg_weight': 1e-4, 'model.dropout': 0.0},
    'clothing': {'model.n_ui_layers': 3, 'model.image_knn_k': 40,
                 'model.text_knn_k': 10, 'model.cl_weight': 0.01,
                 'model.reg_weight': 1e-5, 'model.dropout': 0.0},
}


@dataclass
class SMOREConfig(ModelConfig):
    """SMORE (MMRec's ``SMORE.yaml``; defaults: the official README's Baby values)."""

    #: raw feature tables are trainable parameters (as released); false freezes
    #: them (no gradient and no optimizer state: a third of their memory at
    #: most, and the frozen tables share the data's memory).
    trainable_features: bool = True
    #: width d of the ID embeddings and of the projected modality features.
    embedding_size: int = 64
    #: LightGCN layers of the content view (layer mean).
    n_ui_layers: int = 4
    #: propagation layers on each item-item graph (modality and fusion views).
    n_layers: int = 1
    #: neighbours per item in the kNN graph of the modality named 'image' (the item
    #: itself included).
    image_knn_k: int = 40
    #: neighbours per item in the kNN graph of the modality named 'text'.
    text_knn_k: int = 15
    #: neighbours per item in the kNN graph of any other modality.
    knn_k: int = 10
    #: weight of the L2 penalty on the batch's final embeddings (divided by 2B).
    reg_weight: float = 1e-4
    #: weight of the InfoNCE terms between the side and content views (MMRec's
    #: ``cl_loss``).
    cl_weight: float = 0.01
    #: InfoNCE temperature.
    cl_temperature: float = 0.2
    #: dropout on the preference gates of the content view (training mode).
    dropout: float = 0.1

    #: MMRec's grid (128 runs).
    GRID: ClassVar[Dict[str, list]] = {
        'model.n_ui_layers': [3, 4],
        'model.image_knn_k': [10, 15, 20, 40],
        'model.text_knn_k': [10, 15, 20, 40],
        'model.reg_weight': [1e-5, 1e-4],
        'model.dropout': [0.0, 0.1],
    }

    def __post_init__(self) -> None:
        for name in ('embedding_size', 'image_knn_k', 'text_knn_k', 'knn_k'):
            check_positive_int(f'model.{name}', getattr(self, name))
        for name in ('n_ui_layers', 'n_layers'):
            check_nonnegative_int(f'model.{name}', getattr(self, name))
        check_range('model.reg_weight', self.reg_weight, 0.0)
        check_range('model.cl_weight', self.cl_weight, 0.0)
        check_range('model.cl_temperature', self.cl_temperature, 0.0, low_open=True)
        check_range('model.dropout', self.dropout, 0.0, 1.0, high_open=True)

    def knn_k_of(self, modality: str) -> int:
        """The number of neighbours of ``modality``'s kNN graph."""
        return {'image': self.image_knn_k, 'text': self.text_knn_k}.get(modality,
                                                                         self.knn_k)


class SMOREOutput(NamedTuple):
    """One forward pass (:meth:`SMORE.encode`)."""

    #: final user embeddings ``[U, d]``.
    user: Tensor
    #: final item embeddings ``[N, d]``.
    item: Tensor
    #: the side embedding ``[U + N, d]`` (users first).
    side: Tensor
    #: the content view ``[U + N, d]``.
    content: Tensor


@register('smore')
class SMORE(Recommender):
    r"""SMORE (see the module docstring for the equations).

    Args:
        data (HeteroData): the dataset, with at least one item feature table.
        config (SMOREConfig, optional): the model's options.
    """

    config_class = SMOREConfig
    min_modalities = 1
    stochastic_training = True  # dropout on the preference gates
    protocol = {'lr_decay': 0.96, 'weight_decay': 0.0}
    reference = ('Ong & Khong, "Spectrum-based Modality Representation Fusion Graph '
                 'Convolutional Network for Multimodal Recommendation", WSDM 2025')

    @classmethod
    def graph_transforms(cls, config) -> List:
        """The user-item normalisation; the kNN graphs depend on the data's
        modalities (one per modality, ``config.knn_k_of(m)`` neighbours) and are
        added by :meth:`prepare`."""
        return [UserItemNorm()]

    @classmethod
    def knn_transforms(cls, config: SMOREConfig, modalities) -> List[ItemKNN]:
        """One :class:`ItemKNN` per distinct neighbour count over ``modalities``."""
        by_k: Dict[int, List[str]] = {}
        for m in modalities:
            by_k.setdefault(config.knn_k_of(m), []).append(m)
        return [ItemKNN(k, 'similarity', modalities=tuple(ms))
                for k, ms in by_k.items()]

    @classmethod
    def prepare(cls, data, config: Optional[SMOREConfig] = None, processed_dir=None):
        config = config if config is not None else cls.config_class()
        modalities = tuple(getattr(data, 'modalities', None) or ())
        transforms = cls.graph_transforms(config) + cls.knn_transforms(config,
                                                                       modalities)
        return apply_transforms(data, transforms, processed_dir)

    def __init__(self, data, config: Optional[SMOREConfig] = None) -> None:
        super().__init__(data, config)
        data = self.prepare(data, self.config)
        c = self.config
        d = c.embedding_size
        dtype = torch.get_default_dtype()
        mods = self.modalities

        self.user_embedding = torch.nn.Embedding(self.num_users, d)
        self.item_embedding = torch.nn.Embedding(self.num_items, d)
        self.features = torch.nn.ParameterDict({
            m: feature_table(data['item'][m], dtype, c.trainable_features)
            for m in mods})
        self.projections = torch.nn.ModuleDict({
            m: Linear(self.features[m].size(1), d) for m in mods})
        self.spectrum = SpectralFilter(d, len(mods))
        self.item_gates = torch.nn.ModuleDict({m: Linear(d, d) for m in mods})
        self.fusion_gate = Linear(d, d)
        self.queries = torch.nn.ModuleDict({
            m: torch.nn.Sequential(Linear(d, d), torch.nn.Tanh(),
                                   Linear(d, d, bias=False)) for m in mods})
        self.preference_gates = torch.nn.ModuleDict({m: Linear(d, d) for m in mods})
        self.fusion_preference_gate = Linear(d, d)
        self.dropout = torch.nn.Dropout(c.dropout)
        self.content_view = LightGCNPropagation(c.n_ui_layers)
        self.item_item_view = WeightedPropagation()

        self.graphs = SparseGraphs()
        adj, r_hat = user_item_matrices(data)
        self.graphs.set('adj', adj, transpose=False)  # symmetric
        self.graphs.set('r_hat', r_hat)
        edges, weights = [], []
        for t in self.knn_transforms(c, mods):
            for m in t.modalities:
                edge_type = t.edge_type(m)
                self.graphs.set(f'item_graph_{m}', edge_matrix(data, edge_type))
                edges.append(data[edge_type].edge_index.cpu())
                weights.append(data[edge_type].edge_weight.cpu().double())
        n = self.num_items
        self.graphs.set('fusion_graph', sparse_from_edges(
            torch.cat(edges, dim=1), torch.cat(weights), (n, n), dtype=dtype,
            layout='csr', reduce='max'))
        self.reset_parameters()
        device = data[UI].edge_index.device
        if device.type != 'cpu':
            self.to(device)

    def reset_parameters(self) -> None:
        """Xavier-uniform ID embeddings, standard normal spectral filters, PyTorch's
        defaults for the linear layers (the feature tables keep their values)."""
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        self.spectrum.reset_parameters()
        for module in [*self.projections.values(), *self.item_gates.values(),
                       self.fusion_gate, *self.preference_gates.values(),
                       self.fusion_preference_gate]:
            module.reset_parameters()
        for query in self.queries.values():
            query[0].reset_parameters()
            query[2].reset_parameters()

    # -- forward -----------------------------------------------------------------------
    def _item_graph_view(self, name: str, gated: Tensor) -> Tensor:
        r""":math:`[\hat{\mathbf{R}}\mathbf{S}^{L'}\mathbf{G};
        \mathbf{S}^{L'}\mathbf{G}]` on the item graph ``name``."""
        h = gated
        for _ in range(self.config.n_layers):
            h = self.item_item_view(h, self.graphs[name],
                                    transpose=self.graphs[name + '_t'])
        user = self.item_item_view(h, self.graphs['r_hat'],
                                   transpose=self.graphs['r_hat_t'])
        return torch.cat([user, h])

    def encode(self) -> SMOREOutput:
        """The full forward pass in the current mode."""
        item = self.item_embedding.weight
        projected = [self.projections[m](self.features[m]) for m in self.modalities]
        filtered, fusion = self.spectrum(projected)
        x = torch.cat([self.user_embedding.weight, item])
        content = self.content_view(x, self.graphs['adj'])

        fusion_view = self._item_graph_view(
            'fusion_graph', item * torch.sigmoid(self.fusion_gate(fusion)))
        side = self.dropout(torch.sigmoid(self.fusion_preference_gate(content))) * \
            fusion_view
        for m, conv in zip(self.modalities, filtered):
            view = self._item_graph_view(f'item_graph_{m}',
                                         item * torch.sigmoid(self.item_gates[m](conv)))
            attention = torch.softmax(self.queries[m](fusion_view), dim=-1)
            prefer = self.dropout(torch.sigmoid(self.preference_gates[m](content)))
            side = side + prefer * (attention * view)
        side = side / (len(self.modalities) + 1)
        final = content + side
        user, item = final.split([self.num_users, self.num_items])
        return SMOREOutput(user, item, side, content)

    def embed(self) -> Tuple[Tensor, Tensor]:
        out = self.encode()
        return out.user, out.item

    # -- loss --------------------------------------------------------------------------
    def loss(self, batch: BPRBatch) -> Dict[str, Tensor]:
        """``{'total', 'bpr', 'reg', 'cl'}``: ``reg`` weighted, ``cl`` unweighted."""
        c = self.config
        users, pos, neg = batch
        out = self.encode()
        e_u, e_i, e_j = out.user[users], out.item[pos], out.item[neg]
        bpr = bpr_loss((e_u * e_i).sum(-1), (e_u * e_j).sum(-1), batch)
        squares = e_u.square().sum(-1) + e_i.square().sum(-1) + e_j.square().sum(-1)
        reg = c.reg_weight * batch.sum(squares) / (2 * batch.nominal_size)
        # InfoNCE couples the batch's rows: over the rows of the global batch.
        U = self.num_users
        items = pos + U
        cl = (info_nce(batch.gather(out.side[items]), batch.gather(out.content[items]),
                       c.cl_temperature) +
              info_nce(batch.gather(out.side[users]), batch.gather(out.content[users]),
                       c.cl_temperature))
        total = bpr + reg + c.cl_weight * cl
        return {'total': total, 'bpr': bpr, 'reg': reg, 'cl': cl}
