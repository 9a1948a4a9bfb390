r"""MambaRec: multimodal recommendation with local and global alignment
(`"MambaRec" <https://doi.org/10.1145/3746252>`_, CIKM 2025) on PyTorch Geometric.

Two variants (:attr:`MambaRecConfig.variant`):

``'reference'`` (default) computes exactly what the authors' released implementation
computes, which produced the published numbers (docs/reference.md §2-§5):

1. raw feature tables :math:`\mathbf{X}_m` (trainable, initialised from the data);
2. projection :math:`f_m`: for the reduced modalities (default: ``image``)
   :math:`D_m \to D_m/r \to d` (two affine stages), for the others :math:`D_m \to d`;
3. :math:`g_m = \mathrm{DREAM}_m(f_m)` (local alignment);
4. :math:`h_m = \mathrm{Dropout}(\mathrm{LayerNorm}(g_m))`, one LayerNorm shared;
5. gated item vectors :math:`e_m = \mathbf{E}_{\mathrm{item}} \odot
   \sigma(\mathrm{Lin}_m(h_m))`;
6. content view :math:`c`: LightGCN layer mean on the normalised user-item graph
   from :math:`[\mathbf{E}_{\mathrm{user}}; \mathbf{E}_{\mathrm{item}}]`;
7. modality views :math:`z_m = [\hat{\mathbf{R}} \mathbf{S}_m^{L'} e_m;
   \mathbf{S}_m^{L'} e_m]` on the item-item kNN graph :math:`\mathbf{S}_m`;
8. fusion: :math:`a = \mathrm{softmax}_m(q(z_m))` with a shared
   :math:`q = \mathrm{Lin}(d \to 1)\circ\tanh\circ\mathrm{Lin}(d \to d)`,
   :math:`\mathrm{common} = \sum_m a_m z_m`,
   :math:`s_m = \sigma(\mathrm{Lin}'_m(c)) \odot (z_m - \mathrm{common})`,
   :math:`\mathrm{side} = (\sum_m s_m + \mathrm{common}) / (M + 1)`;
   with one modality :math:`\mathrm{side} = z_m`;
9. final embeddings :math:`c + \mathrm{side}`, scores are dot products.

Loss per batch (users :math:`u`, positives :math:`i`, negatives :math:`j`):
:math:`\mathcal{L}_{\mathrm{BPR}} + \lambda_{\mathrm{reg}}
(\|e_u\|^2 + \|e_i\|^2 + \|e_j\|^2) / 2B + \lambda_{\mathrm{cl}}
(\mathrm{InfoNCE}(\mathrm{side}_i, c_i) + \mathrm{InfoNCE}(\mathrm{side}_u, c_u)) +
\lambda_{\mathrm{mmd}} \mathrm{MMD}(\bar g_v[i], \bar g_t[i])` with :math:`\bar g`
the L2-normalised DREAM outputs. With more than two modalities the MMD term is the
mean over all modality pairs; with one modality there is no MMD term. On several
processes (:mod:`~mambarec_pyg.train.distributed`) BPR and the regulariser are
per-triple terms (``batch.mean`` / ``batch.sum``; the denominator :math:`B` is the
configured global batch size), while InfoNCE and MMD couple the batch: every process
computes them on the rows of the global batch, gathered once per step
(``batch.gather``). Dropout acts on the whole item table and DREAM's BatchNorm
normalises over all items (not the batch), so both are the same on every process.

``'paper'`` follows the paper's text where it differs (docs/reference.md §6): every
reduced modality (default: all) is projected by one linear map to
:math:`d' = \lfloor \min_m D_m / r \rfloor`; DREAM uses the paper's channel and
spatial attention and maps :math:`d'` input channels to :math:`d` output channels
(open point 1), keeping the released :math:`1\times1` conv + BatchNorm + ReLU from the
:math:`5d` fused map back to :math:`d` (open point 2); the InfoNCE term pairs the
DREAM outputs of two modalities of the same batch positive (mean over modality pairs;
none with one modality). Without local alignment the paper variant projects
:math:`D_m \to d' \to d` (two affine stages), since nothing else would lift
:math:`d'` to the :math:`d`-wide gates.

Implementation notes (each fast path keeps its plain counterpart as an option and is
tested against it):

* The released loss runs every DREAM a second time for the MMD term. In training mode
  that second pass gives the same values, so the first pass is reused (identical
  gradients); its only other effect, a second update of the BatchNorm running
  statistics with the same batch statistics, is reproduced exactly by updating once
  with momentum :math:`1 - (1 - m)^2` (and counting the batch twice). This happens in
  :meth:`MambaRec.loss` in training mode whenever the released loss would run the
  second pass: reference variant, local and global alignment on, two or more
  modalities (also with ``mmd_weight = 0``); :meth:`MambaRec.forward` updates once.
* :meth:`MambaRec.loss` computes a loss term whose weight is 0 (e.g. InfoNCE during a
  warm-up, :attr:`MambaRecConfig.cl_warmup_epochs`) without gradient, for logging
  only.
* Propagation runs through :mod:`mambarec_pyg.nn.conv`'s PyG
  :class:`~torch_geometric.nn.conv.MessagePassing` layers
  (:class:`~mambarec_pyg.nn.conv.LightGCNPropagation` over
  :class:`~torch_geometric.nn.conv.LGConv` layers,
  :class:`~mambarec_pyg.nn.conv.WeightedPropagation`) on the graphs the data carries
  (:class:`~mambarec_pyg.data.transforms.UserItemNorm`,
  :class:`~mambarec_pyg.data.transforms.ItemKNN` with similarity weights).
  :attr:`MambaRecConfig.propagation` ``'fused'`` lets their sparse kernels reuse the
  precomputed transposes in the backward pass; ``'pyg'`` leaves the differentiation
  of each sparse product to autograd.
* :attr:`MambaRecConfig.fusion_rows` ``'batch'`` runs the row-wise fusion step
  (step 8) in :meth:`MambaRec.loss` only on the rows the loss reads; ``'all'`` on
  every node and then indexes.
"""
from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass
from typing import (Any, ClassVar, Dict, Iterator, List, Mapping, NamedTuple, Optional,
                    Sequence, Tuple, Union)

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn import Embedding, LayerNorm, Linear

from ..config import ConfigError, ModelConfig, check_choice, check_positive_int
from ..data.index import UI
from ..data.sampling import BPRBatch
from ..data.transforms import ItemKNN, UserItemNorm
from ..nn.conv import LightGCNPropagation, WeightedPropagation
from ..nn.dream import DREAM
from ..nn.fusion import ModalityFusion
from ..nn.losses import bpr_loss, info_nce, mmd_loss
from ..nn.projection import Projection, reduced_width
from .base import Recommender, SparseGraphs, as_csr, edge_matrix, user_item_matrices
from .registry import register

__all__ = ['MambaRec', 'MambaRecConfig', 'MambaRecOutput', 'LossParts']

#: the loss parts of MambaRec, in the order they are logged.
LossParts = ('total', 'bpr', 'reg', 'cl', 'mmd')


@dataclass
class MambaRecConfig(ModelConfig):
    """MambaRec. Defaults reproduce the released implementation (docs/reference.md)."""

    #: ``'reference'`` computes what the published numbers were produced with;
    #: ``'paper'`` what the paper's text describes (docs/reference.md §6).
    variant: str = 'reference'
    #: width d of the user and item embeddings.
    embedding_size: int = 64
    #: LightGCN layers on the user-item graph (the content view).
    ui_layers: int = 4
    #: propagation layers on each item-item kNN graph (the modality views).
    ii_layers: int = 1
    #: neighbours kept per item in the item-item graphs (the item itself included).
    knn_k: int = 10
    #: the dimensionality-reduction factor r.
    reduction_factor: int = 8
    #: modalities whose projection is reduced; ``None`` = the variant's choice
    #: (reference: ``image`` only, two stages; paper: every modality).
    reduced_modalities: Optional[Tuple[str, ...]] = None
    #: DREAM on (local alignment); ``False`` is the paper's "w/o LA" ablation.
    local_alignment: bool = True
    #: MMD + InfoNCE on (global alignment); ``False`` is the paper's "w/o GA" ablation.
    global_alignment: bool = True
    #: raw feature tables are trainable parameters (released behaviour).
    trainable_features: bool = True
    #: dropout after the shared LayerNorm.
    dropout: float = 0.2
    #: weight of the L2 penalty on the batch's final embeddings.
    reg_weight: float = 1e-4
    #: weight of the InfoNCE term.
    cl_weight: float = 0.01
    #: InfoNCE temperature.
    cl_temperature: float = 0.2
    #: epochs at the start with the InfoNCE weight held at 0 (docs/reference.md
    #: §8). 0 is the released behaviour. Measured (seed 999, B = 2048, defaults
    #: otherwise): on the Baby-scale synthetic preset, 5 epochs with 0 kept BPR at
    #: 0.6925 -> 0.6918 and valid Recall@20 fell from 0.116 (epoch 0) to 0.058-0.068,
    #: while 5 warm-up epochs took BPR 0.683 -> 0.299 and valid Recall@20 0.151 ->
    #: 0.207; with 3 warm-up epochs InfoNCE, once on, did not pin BPR again (7
    #: epochs: BPR 0.683 -> 0.214, valid Recall@20 0.152 -> 0.244, still rising).
    #: On ``tiny`` the effect is small (B = 2048, 40 epochs: best valid
    #: Recall@20 0.725 without vs 0.745 with 10 warm-up epochs; B = 128, 20 epochs:
    #: 0.750 vs 0.755 with 5).
    cl_warmup_epochs: int = 0
    #: weight of the MMD term.
    mmd_weight: float = 0.15
    #: Gaussian-kernel bandwidth sigma; several values give a sum of kernels.
    mmd_bandwidth: Union[float, Tuple[float, ...]] = 1.5
    #: sparse propagation: ``'fused'`` (the layers' sparse kernels reuse precomputed
    #: transposes in the backward pass; same values, faster) or ``'pyg'`` (autograd
    #: differentiates each of PyG's sparse products).
    propagation: str = 'fused'
    #: rows the fusion step runs on inside ``loss()``: ``'batch'`` (only the rows the
    #: loss reads; same values, faster) or ``'all'`` (every node, then indexed).
    fusion_rows: str = 'batch'
    #: compute a two-stage projection ``D -> D/r -> d`` as one composed affine map
    #: (same function, ``r``-times fewer multiply-adds on the feature table).
    compose_projection: bool = True

    #: the paper's grid (§5.1.4), searched by ``mambarec search``.
    GRID: ClassVar[Dict[str, list]] = {
        'model.mmd_weight': [0.1, 0.15, 0.2],
        'model.mmd_bandwidth': [1.0, 1.5, 2.0],
    }

    def __post_init__(self) -> None:
        check_choice('model.variant', self.variant, ('reference', 'paper'))
        check_choice('model.propagation', self.propagation, ('fused', 'pyg'))
        check_choice('model.fusion_rows', self.fusion_rows, ('batch', 'all'))
        for name in ('embedding_size', 'knn_k', 'reduction_factor'):
            check_positive_int(f'model.{name}', getattr(self, name))
        for name in ('ui_layers', 'ii_layers', 'cl_warmup_epochs'):
            if getattr(self, name) < 0:
                raise ConfigError(f'model.{name}: expected an integer >= 0, got '
                                  f'{getattr(self, name)!r}')
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f'model.dropout: expected a probability in [0, 1), got '
                              f'{self.dropout!r}')
        for name in ('reg_weight', 'cl_weight', 'mmd_weight'):
            if getattr(self, name) < 0:
                raise ConfigError(f'model.{name}: expected a weight >= 0, got '
                                  f'{getattr(self, name)!r}')
        if self.cl_temperature <= 0:
            raise ConfigError(f'model.cl_temperature: expected > 0, got '
                              f'{self.cl_temperature!r}')
        bws = self.mmd_bandwidth if isinstance(self.mmd_bandwidth, tuple) else (
            self.mmd_bandwidth, )
        if len(bws) == 0 or any(b <= 0 for b in bws):
            raise ConfigError(f'model.mmd_bandwidth: expected one or more values > 0, '
                              f'got {self.mmd_bandwidth!r}')


class _Spec(NamedTuple):
    """The structure of a multi-view model of this family (MambaRec or MGCN)."""

    variant: str
    embedding_size: int
    ui_layers: int
    ii_layers: int
    knn_k: int
    reduction_factor: int
    reduced_modalities: Optional[Tuple[str, ...]]
    dream: bool
    layer_norm: bool
    dropout: float
    trainable_features: bool
    reg_weight: float
    cl: bool
    cl_weight: float
    cl_temperature: float
    cl_warmup_epochs: int
    mmd: bool
    #: whether the loss reports an ``'mmd'`` part (0 while ``mmd`` is off)
    mmd_term: bool
    mmd_weight: float
    mmd_bandwidth: Union[float, Tuple[float, ...]]
    propagation: str
    fusion_rows: str
    compose_projection: bool


class MambaRecOutput(NamedTuple):
    """Everything one forward pass computes (:meth:`MambaRec.encode`)."""

    #: final user embeddings ``[U, d]``.
    user: Tensor
    #: final item embeddings ``[N, d]``.
    item: Tensor
    #: the fused modality side ``[U + N, d]`` (users first).
    side: Tensor
    #: the LightGCN content view ``[U + N, d]``.
    content: Tensor
    #: per modality, the alignment output :math:`g_m` ``[N, d]`` (DREAM's, before
    #: LayerNorm; the projection's without local alignment).
    alignment: Dict[str, Tensor]


# ---------------------------------------------------------------------------------
class _Tables(torch.nn.Module):
    """Per-modality raw feature tables: parameters or (frozen) buffers."""

    def __init__(self, tables: Mapping[str, Tensor], trainable: bool):
        super().__init__()
        self.names = tuple(tables)
        for name, x in tables.items():
            if trainable:
                self.register_parameter(name, torch.nn.Parameter(x))
            else:
                self.register_buffer(name, x)

    def __getitem__(self, name: str) -> Tensor:
        return getattr(self, name)


class _Shared:
    """A read-only reference that copies of the model share (deepcopy returns it
    as is): the data's feature tensors, kept for :meth:`MambaRec.reset_parameters`."""

    def __init__(self, value):
        self.value = value

    def __deepcopy__(self, memo):
        return self


@register('mambarec')
class MambaRec(Recommender):
    r"""The MambaRec recommender (see the module docstring for the equations).

    Args:
        data (HeteroData): the dataset: ``data['user'].num_nodes``,
            ``data['item'].num_nodes``, ``data.modalities`` and one ``[N, D_m]``
            feature tensor ``data['item'][m]`` per modality (in order; the first plays
            the released "image / v" role, the second "text / t"), the training
            interactions ``data['user', 'interacts', 'item'].edge_index``, and the
            graphs of :meth:`graph_transforms` (computed when missing).
        config (MambaRecConfig, optional): the model's options.

    :meth:`set_graphs` replaces the graphs (e.g. with precomputed ones).
    """

    config_class = MambaRecConfig
    min_modalities = 1
    stochastic_training = True  # dropout after the LayerNorm
    protocol = {'lr_decay': 0.96, 'weight_decay': 0.0}
    reference = ('Ren, Ju and Lee, "Modality Alignment with Multi-scale Bilateral '
                 'Attention for Multimodal Recommendation", CIKM 2025')

    @classmethod
    def _spec(cls, config: MambaRecConfig) -> _Spec:
        c = config
        return _Spec(
            variant=c.variant, embedding_size=c.embedding_size, ui_layers=c.ui_layers,
            ii_layers=c.ii_layers, knn_k=c.knn_k, reduction_factor=c.reduction_factor,
            reduced_modalities=c.reduced_modalities, dream=c.local_alignment,
            layer_norm=True, dropout=c.dropout, trainable_features=c.trainable_features,
            reg_weight=c.reg_weight, cl=c.global_alignment, cl_weight=c.cl_weight,
            cl_temperature=c.cl_temperature, cl_warmup_epochs=c.cl_warmup_epochs,
            mmd=c.global_alignment, mmd_term=True, mmd_weight=c.mmd_weight,
            mmd_bandwidth=c.mmd_bandwidth, propagation=c.propagation,
            fusion_rows=c.fusion_rows, compose_projection=c.compose_projection)

    @classmethod
    def graph_transforms(cls, config) -> List:
        return [UserItemNorm(), ItemKNN(cls._spec(config).knn_k, 'similarity')]

    def __init__(self, data, config: Optional[MambaRecConfig] = None):
        super().__init__(data, config)
        spec = self.spec = self._spec(self.config)
        data = self.prepare(data, self.config)
        modalities = self.modalities
        features = {m: data['item'][m].detach().cpu() for m in modalities}
        device = data[UI].edge_index.device
        self.reduced_modalities = _resolve_reduced(spec, modalities)
        d = spec.embedding_size
        dtype = torch.get_default_dtype()

        self.user_embedding = Embedding(self.num_users, d)
        self.item_embedding = Embedding(self.num_items, d)
        # Keep the data's tensors to re-initialise the tables in reset_parameters().
        self._initial_features = _Shared(features)
        self.features = _Tables(
            {m: features[m].to(dtype).clone() for m in modalities},
            trainable=spec.trainable_features)

        dims = {m: features[m].size(1) for m in modalities}
        self.projections = torch.nn.ModuleDict()
        self.dreams = torch.nn.ModuleDict() if spec.dream else None
        reduced_dims = [dims[m] for m in self.reduced_modalities]
        try:
            d_prime = (reduced_width(reduced_dims, spec.reduction_factor)
                       if reduced_dims else None)
            hidden_widths = {m: reduced_width(dims[m], spec.reduction_factor)
                             for m in self.reduced_modalities}
        except ValueError as e:
            raise ConfigError(f'model.reduction_factor: {e}') from None
        for m in modalities:
            reduced = m in self.reduced_modalities
            if spec.variant == 'reference':
                hidden = hidden_widths[m] if reduced else None
                self.projections[m] = Projection(dims[m], d, hidden,
                                                 fused=spec.compose_projection)
                if self.dreams is not None:
                    self.dreams[m] = DREAM(d, d, attention='released')
            else:
                width = d_prime if reduced else d
                if self.dreams is not None:
                    self.projections[m] = Projection(dims[m], width)
                    self.dreams[m] = DREAM(width, d, attention='paper')
                else:
                    self.projections[m] = Projection(
                        dims[m], d, width if reduced else None,
                        fused=spec.compose_projection)
        self.norm = LayerNorm(d) if spec.layer_norm else None
        self.dropout = torch.nn.Dropout(spec.dropout)
        self.item_gates = torch.nn.ModuleDict({m: Linear(d, d) for m in modalities})
        self.fusion = ModalityFusion(d, modalities)
        fused = spec.propagation == 'fused'
        self.content_view = LightGCNPropagation(spec.ui_layers, fused=fused)
        self.item_item_view = WeightedPropagation(fused=fused)
        self.cl_weight_now = spec.cl_weight

        # The graphs, from the data (float64 weights, cast to the model's dtype).
        self.graphs = SparseGraphs()
        adj, r_hat = user_item_matrices(data, torch.float64)
        knn = ItemKNN(spec.knn_k, 'similarity')
        item_graphs = {m: edge_matrix(data, knn.edge_type(m), torch.float64)
                       for m in modalities}
        self.set_graphs(adj, r_hat, item_graphs)

        self.reset_parameters()
        if device.type != 'cpu':
            self.to(device)

    # -----------------------------------------------------------------------------
    def reset_parameters(self) -> None:
        r"""Xavier-uniform ID embeddings, feature tables back to the data, PyTorch's
        default initialisation for every layer, BatchNorm statistics cleared."""
        torch.nn.init.xavier_uniform_(self.user_embedding.weight)
        torch.nn.init.xavier_uniform_(self.item_embedding.weight)
        with torch.no_grad():
            for m in self.modalities:
                table = self.features[m]
                table.copy_(self._initial_features.value[m].to(table.device))
        # (This order fixes the random draws of a seeded initialisation.)
        layers = [*self.projections.values()]
        if self.norm is not None:
            layers.append(self.norm)
        layers += list(self.item_gates.values())
        if self.dreams is not None:
            layers += list(self.dreams.values())
        for layer in [*layers, self.fusion]:
            layer.reset_parameters()

    def set_graphs(self, adj=None, r_hat=None,
                   item_graphs: Optional[Mapping[str, object]] = None) -> None:
        r"""Replace the propagation graphs (dense or sparse tensors or numpy arrays).

        Args:
            adj: normalised user-item adjacency ``[U + N, U + N]`` (users first).
            r_hat: its user-item block ``[U, N]``.
            item_graphs: ``{modality: [N, N]}`` normalised kNN graphs (rows are the
                items that aggregate).
        """
        U, N = self.num_users, self.num_items
        dtype = self.user_embedding.weight.dtype
        device = self.user_embedding.weight.device
        todo = []
        if adj is not None:
            todo.append(('adj', adj, (U + N, U + N)))
        if r_hat is not None:
            todo.append(('r_hat', r_hat, (U, N)))
        for m, g in (item_graphs or {}).items():
            if m not in self.modalities:
                raise ValueError(f'set_graphs: unknown modality {m!r}; expected one of '
                                 f'{", ".join(self.modalities)}')
            todo.append((f'item_graph_{m}', g, (N, N)))
        for name, value, shape in todo:
            csr = as_csr(value, f'set_graphs: {name}', shape).to(device=device,
                                                                 dtype=dtype)
            self.graphs.set(name, csr)

    # -----------------------------------------------------------------------------
    def on_epoch_start(self, epoch: int) -> Optional[Dict[str, Any]]:
        """The InfoNCE warm-up: weight 0 during the first ``cl_warmup_epochs``."""
        spec = self.spec
        if not spec.cl:
            return None
        warm = epoch < spec.cl_warmup_epochs
        self.cl_weight_now = 0.0 if warm else spec.cl_weight
        return {'cl_weight': self.cl_weight_now} if spec.cl_warmup_epochs else None

    def diagnose(self, history: Sequence[Dict[str, Any]]) -> List[str]:
        """A run whose BPR loss never left ln 2 (within 0.01, moving less than 0.005)
        and whose validation metric never improved after the first epoch learned no
        ranking (with the released weights InfoNCE can hold it there;
        docs/reference.md §8)."""
        bpr = [r['loss']['bpr'] for r in history if 'bpr' in (r.get('loss') or {})]
        # near chance (ln 2, the loss of all-equal scores), not moving, and no
        # validation improvement after the first epoch
        if len(bpr) < 3 or any(abs(b - math.log(2)) > 0.01 for b in bpr) or \
                max(bpr) - min(bpr) > 0.005 or any(r.get('best') for r in history[1:]):
            return []
        hint = ('raise --model.cl-warmup-epochs (e.g. 10) to hold the InfoNCE weight '
                'at 0 while BPR starts to learn' if self.spec.cl and
                self.spec.cl_weight > 0 else 'check the learning rate and the data')
        return [f'the BPR loss stayed at ln 2 = 0.693 (chance) for all {len(bpr)} '
                f'epochs ({min(bpr):.4f}-{max(bpr):.4f}): the model learned no ranking, '
                f'and its metrics may be below most-popular; {hint}']

    # -----------------------------------------------------------------------------
    @property
    def _double_bn_update(self) -> bool:
        """Whether the released loss would run each DREAM a second time (the MMD
        term of the reference variant)."""
        s = self.spec
        return (s.variant == 'reference' and s.dream and s.mmd
                and len(self.modalities) > 1)

    @contextlib.contextmanager
    def _bn_updates(self, count: int) -> Iterator[None]:
        """Within the block, each BatchNorm of the DREAMs updates its running
        statistics as if the same batch were seen ``count`` times:
        momentum :math:`1 - (1 - m)^{count}`, ``num_batches_tracked += count``."""
        if count == 1 or self.dreams is None or not self.training:
            yield
            return
        norms = [mod for mod in self.dreams.modules()
                 if isinstance(mod, torch.nn.modules.batchnorm._BatchNorm)
                 and mod.track_running_stats]
        saved = [mod.momentum for mod in norms]
        if any(mom is None for mom in saved):
            raise RuntimeError('the released double BatchNorm update needs a '
                               'momentum, got momentum=None')
        try:
            for mod in norms:
                mod.momentum = 1.0 - (1.0 - mod.momentum) ** count
            yield
            with torch.no_grad():
                for mod in norms:
                    mod.num_batches_tracked.add_(count - 1)
        finally:
            for mod, mom in zip(norms, saved):
                mod.momentum = mom

    def _modality_items(self, bn_updates: int = 1):
        """Steps 1-5: gated item vectors :math:`e_m` and alignment outputs
        :math:`g_m`, per modality."""
        item = self.item_embedding.weight
        gated, aligned = [], {}
        with self._bn_updates(bn_updates):
            for m in self.modalities:
                f = self.projections[m](self.features[m])
                g = self.dreams[m](f) if self.dreams is not None else f
                aligned[m] = g
                h = self.norm(g) if self.norm is not None else g
                h = self.dropout(h)
                gated.append(item * torch.sigmoid(self.item_gates[m](h)))
        return gated, aligned

    def _content(self) -> Tensor:
        """Step 6: the LightGCN content view ``[U + N, d]``."""
        x = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        return self.content_view(x, self.graphs['adj'])

    def _propagate(self, name: str, x: Tensor) -> Tensor:
        return self.item_item_view(x, self.graphs[name],
                                   transpose=self.graphs[name + '_t'])

    def _modality_view(self, m: str, e: Tensor):
        """Step 7: ``(users [U, d], items [N, d])`` of the modality view."""
        for _ in range(self.spec.ii_layers):
            e = self._propagate(f'item_graph_{m}', e)
        return self._propagate('r_hat', e), e

    def fuse(self, content: Tensor, views: Sequence[Tensor]) -> Tensor:
        r"""Step 8, row-wise: the side embedding from the content view and the
        modality views of the same rows (:class:`~mambarec_pyg.nn.ModalityFusion`)."""
        return self.fusion(content, views)

    def encode(self, bn_updates: int = 1) -> MambaRecOutput:
        """The full forward pass in the current mode, with its intermediate
        outputs."""
        gated, aligned = self._modality_items(bn_updates)
        content = self._content()
        views = []
        for m, e in zip(self.modalities, gated):
            user, item = self._modality_view(m, e)
            views.append(torch.cat([user, item]))
        side = self.fuse(content, views)
        final = content + side
        user, item = final.split([self.num_users, self.num_items])
        return MambaRecOutput(user, item, side, content, aligned)

    def embed(self) -> Tuple[Tensor, Tensor]:
        """Final embeddings ``(user [U, d], item [N, d])`` in the current mode."""
        out = self.encode()
        return out.user, out.item

    # -----------------------------------------------------------------------------
    def loss(self, batch: BPRBatch) -> Dict[str, Tensor]:
        r"""The training loss of a batch of ``(user, positive, negative)`` triples,
        from one forward pass in the current mode (train mode for training).

        ``batch.size`` is the denominator of the regularisation term (the configured
        batch size, also for a short last batch). The InfoNCE weight is the one in
        force (:meth:`on_epoch_start`). Ids are not checked here (the sampler makes
        valid batches; checking would synchronise the device every step).

        Returns ``{'total', 'bpr', 'reg', 'cl', 'mmd'}`` (``'mmd'`` only for models
        with an MMD term): ``reg`` weighted, ``cl`` and ``mmd`` unweighted.
        """
        s = self.spec
        users, pos, neg = batch.users, batch.pos, batch.neg
        B = users.numel()
        batch_size = batch.nominal_size
        cl_weight = self.cl_weight_now
        U = self.num_users
        mmd_active = s.mmd and len(self.modalities) > 1

        gated, aligned = self._modality_items(
            2 if self._double_bn_update and self.training else 1)
        content = self._content()
        items = torch.cat([pos, neg])
        nodes = torch.cat([users, items + U])
        if s.fusion_rows == 'batch':
            views = []
            for m, e in zip(self.modalities, gated):
                user_m, item_m = self._modality_view(m, e)
                views.append(torch.cat([user_m[users], item_m[items]]))
            content_r = content[nodes]
            side_r = self.fuse(content_r, views)
        else:
            views = []
            for m, e in zip(self.modalities, gated):
                views.append(torch.cat(self._modality_view(m, e)))
            side = self.fuse(content, views)
            content_r, side_r = content[nodes], side[nodes]
        final = content_r + side_r
        e_u, e_i, e_j = final.split([B, B, B])

        bpr = bpr_loss((e_u * e_i).sum(dim=1), (e_u * e_j).sum(dim=1), batch)
        reg = s.reg_weight * (batch.sum(e_u.square()) + batch.sum(e_i.square()) +
                              batch.sum(e_j.square())) / 2 / batch_size
        zero = final.new_zeros(())
        total = bpr + reg

        # The rows of the terms that couple the batch (InfoNCE, MMD): this batch's,
        # or on one process's slice of a global batch the whole batch's, gathered
        # once (every process then computes these terms on the global batch).
        cl_reference = s.cl and s.variant == 'reference'
        pos_aligned = (s.cl and not cl_reference and len(self.modalities) > 1) or \
            mmd_active
        side_u, side_i = side_r[:B], side_r[B:2 * B]
        content_u, content_i = content_r[:B], content_r[B:2 * B]
        g_pos = None
        if batch.shard is not None:
            cols = ([side_u, side_i, content_u, content_i] if cl_reference else []) + \
                ([aligned[m][pos] for m in self.modalities] if pos_aligned else [])
            if cols:
                rows = batch.gather(torch.cat(cols, dim=1)).split(
                    [c.size(1) for c in cols], dim=1)
                if cl_reference:
                    side_u, side_i, content_u, content_i = rows[:4]
                if pos_aligned:
                    g_pos = list(rows[4 if cl_reference else 0:])

        cl = zero
        if s.cl:
            with torch.set_grad_enabled(torch.is_grad_enabled() and cl_weight != 0):
                if s.variant == 'reference':
                    cl = (info_nce(side_i, content_i, s.cl_temperature) +
                          info_nce(side_u, content_u, s.cl_temperature))
                elif len(self.modalities) > 1:
                    g = g_pos if g_pos is not None else \
                        [aligned[m][pos] for m in self.modalities]
                    cl = _pair_mean(lambda a, b: info_nce(a, b, s.cl_temperature), g)
            if cl_weight != 0:
                total = total + cl_weight * cl
        parts = {'total': total, 'bpr': bpr, 'reg': reg,
                 'cl': cl.detach() if cl_weight == 0 else cl}

        if s.mmd_term:
            mmd = zero
            if mmd_active:
                with torch.set_grad_enabled(torch.is_grad_enabled() and
                                            s.mmd_weight != 0):
                    g = [F.normalize(x, dim=1) for x in (
                        g_pos if g_pos is not None else
                        [aligned[m][pos] for m in self.modalities])]
                    mmd = _pair_mean(lambda a, b: mmd_loss(a, b, s.mmd_bandwidth), g)
                if s.mmd_weight != 0:
                    total = total + s.mmd_weight * mmd
                    parts['total'] = total
            parts['mmd'] = mmd
        return parts

    # -----------------------------------------------------------------------------
    def released_names(self) -> Dict[str, str]:
        """The released implementation's state-dict names mapped to this model's
        (a two-modality reference-variant model with local alignment, the first
        modality in the released "image" role and reduced, the second "text")."""
        s = self.spec
        if s.variant != 'reference' or len(self.modalities) != 2 or \
                self.dreams is None or self.reduced_modalities != self.modalities[:1] \
                or self.norm is None:
            raise ValueError(
                'released parameters need a reference-variant MambaRec with local '
                'alignment and two modalities, the first (released "image") reduced '
                f'and the second ("text") not; got variant={s.variant!r}, modalities='
                f'{self.modalities}, reduced={self.reduced_modalities}, '
                f'local_alignment={s.dream}')
        v, t = self.modalities
        names = {
            'user_embedding.weight': 'user_embedding.weight',
            'item_id_embedding.weight': 'item_embedding.weight',
            'image_embedding.weight': f'features.{v}',
            'text_embedding.weight': f'features.{t}',
            'query_common.0.weight': 'fusion.query.0.weight',
            'query_common.0.bias': 'fusion.query.0.bias',
            'query_common.2.weight': 'fusion.query.2.weight',
        }
        for p in ('weight', 'bias'):
            names[f'norm.{p}'] = f'norm.{p}'
            names[f'image_reduce.{p}'] = f'projections.{v}.reduce.{p}'
            names[f'image_trs.{p}'] = f'projections.{v}.trs.{p}'
            names[f'text_trs.{p}'] = f'projections.{t}.trs.{p}'
            names[f'gate_v.0.{p}'] = f'item_gates.{v}.{p}'
            names[f'gate_t.0.{p}'] = f'item_gates.{t}.{p}'
            names[f'gate_image_prefer.0.{p}'] = f'fusion.preference_gates.{v}.{p}'
            names[f'gate_text_prefer.0.{p}'] = f'fusion.preference_gates.{t}.{p}'
        # DREAM keeps the released names below its prefix.
        for m, released in ((v, 'image'), (t, 'text')):
            for key in self.dreams[m].state_dict():
                names[f'dream_{released}.{key}'] = f'dreams.{m}.{key}'
        return names

    def released_state_dict(self, grads: bool = False) -> Dict[str, Tensor]:
        """This model's state under the released names (see :meth:`released_names`);
        ``grads=True``: the gradients of the trainable entries instead."""
        own = dict(self.named_parameters()) if grads else self.state_dict()
        out = {}
        for released, name in self.released_names().items():
            if name in own:
                value = own[name].grad if grads else own[name]
                if value is not None:
                    out[released] = value.detach()
        return out

    def load_released_state_dict(self, state_dict: Mapping[str, object]) -> None:
        """Load the authors' released parameters and BatchNorm statistics, keyed by
        their names (values: numpy arrays or tensors).

        Raises:
            ValueError: one error listing every missing, unexpected or mis-shaped
                entry (name, expected shape, given shape), before anything is changed.
        """
        names = self.released_names()
        own = self.state_dict()
        problems: List[str] = []
        new = {}
        for key, value in state_dict.items():
            if key not in names:
                problems.append(f'unexpected: {key}')
                continue
            tensor = value if isinstance(value, Tensor) else torch.as_tensor(
                np.asarray(value))
            expected = tuple(own[names[key]].shape)
            if tuple(tensor.shape) != expected:
                problems.append(f'mis-shaped: {key}: expected {expected}, got '
                                f'{tuple(tensor.shape)}')
                continue
            new[names[key]] = tensor
        for key, name in names.items():
            if key not in state_dict:
                problems.append(f'missing: {key} (expected shape '
                                f'{tuple(own[name].shape)})')
        if problems:
            raise ValueError(f'load_released_state_dict: {len(problems)} entries do '
                             f'not match this model:\n  ' + '\n  '.join(problems))
        with torch.no_grad():
            for name, value in new.items():
                own[name].copy_(value)


# ---------------------------------------------------------------------------------
def _pair_mean(fn, xs: Sequence[Tensor]) -> Tensor:
    pairs = list(itertools.combinations(xs, 2))
    total = fn(*pairs[0])
    for a, b in pairs[1:]:
        total = total + fn(a, b)
    return total / len(pairs) if len(pairs) > 1 else total


def _resolve_reduced(spec: _Spec, modalities):
    if spec.reduced_modalities is None:
        if spec.variant == 'paper':
            return tuple(modalities)
        return ('image', ) if 'image' in modalities else ()
    unknown = [m for m in spec.reduced_modalities if m not in modalities]
    if unknown:
        raise ConfigError(f'model.reduced_modalities: unknown modality '
                          f'{", ".join(map(repr, unknown))}; valid: '
                          f'{", ".join(map(repr, modalities))}')
    return tuple(m for m in modalities if m in spec.reduced_modalities)
