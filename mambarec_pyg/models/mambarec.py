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

from dataclasses import dataclass
from typing import ClassVar, Dict, Mapping, Optional, Tuple, Union

from torch import Tensor

from ..config import ConfigError, ModelConfig, check_choice, check_positive_int
from . import released
from .multiview import MultiViewOutput, MultiViewRecommender, MultiViewSpec
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


#: Everything one forward pass computes (:meth:`MambaRec.encode`).
MambaRecOutput = MultiViewOutput


@register('mambarec')
class MambaRec(MultiViewRecommender):
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
    stochastic_training = True  # dropout after the LayerNorm
    protocol = {'lr_decay': 0.96, 'weight_decay': 0.0}
    reference = ('Ren, Ju and Lee, "Modality Alignment with Multi-scale Bilateral '
                 'Attention for Multimodal Recommendation", CIKM 2025')

    @classmethod
    def _spec(cls, config: MambaRecConfig) -> MultiViewSpec:
        c = config
        return MultiViewSpec(
            variant=c.variant, embedding_size=c.embedding_size, ui_layers=c.ui_layers,
            ii_layers=c.ii_layers, knn_k=c.knn_k, reduction_factor=c.reduction_factor,
            reduced_modalities=c.reduced_modalities, dream=c.local_alignment,
            layer_norm=True, dropout=c.dropout, trainable_features=c.trainable_features,
            reg_weight=c.reg_weight, cl=c.global_alignment, cl_weight=c.cl_weight,
            cl_temperature=c.cl_temperature, cl_warmup_epochs=c.cl_warmup_epochs,
            mmd=c.global_alignment, mmd_term=True, mmd_weight=c.mmd_weight,
            mmd_bandwidth=c.mmd_bandwidth, propagation=c.propagation,
            fusion_rows=c.fusion_rows, compose_projection=c.compose_projection)

    # -- the released checkpoint (mambarec_pyg.models.released) ---------------------
    def released_names(self) -> Dict[str, str]:
        """The released implementation's state-dict names mapped to this model's
        (:func:`~mambarec_pyg.models.released.released_names`)."""
        return released.released_names(self)

    def released_state_dict(self, grads: bool = False) -> Dict[str, Tensor]:
        """This model's state under the released names
        (:func:`~mambarec_pyg.models.released.released_state_dict`)."""
        return released.released_state_dict(self, grads)

    def load_released_state_dict(self, state_dict: Mapping[str, object]) -> None:
        """Load the authors' released parameters
        (:func:`~mambarec_pyg.models.released.load_released_state_dict`)."""
        released.load_released_state_dict(self, state_dict)
