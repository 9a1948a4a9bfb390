r"""MGCN (`"Multi-View Graph Convolutional Network for Multimedia Recommendation"
<https://arxiv.org/abs/2308.03588>`_, Yu et al., ACM MM 2023), as MMRec and the
official code compute it (``src/models/mgcn.py``; ../BASELINES.md §3.8).

MambaRec is built on MGCN: MGCN is MambaRec's reference variant without DREAM,
without MMD, without the dimensionality reduction and without the LayerNorm and
dropout in front of the gates, so both build on one multi-view encoder
(:class:`~mambarec_pyg.models.multiview.MultiViewRecommender`) and this module only
fixes its structure:

* projection :math:`\tilde{\mathbf{E}}_m = \mathrm{Lin}(D_m \to d)(\mathbf{X}_m)` of
  the trainable raw features;
* behaviour-guided purifier :math:`\mathbf{H}_m = \mathbf{E}_i \odot
  \sigma(\mathbf{W}_m \tilde{\mathbf{E}}_m + \mathbf{b}_m)`;
* user-item view :math:`\mathbf{C}`: the LightGCN layer mean over ``n_ui_layers``;
* item-item views on the similarity-weighted kNN graphs
  (:class:`~mambarec_pyg.data.transforms.ItemKNN`, ``n_layers`` hops), users
  :math:`\hat{\mathbf{R}}\mathbf{H}_m`;
* behaviour-aware fuser (:class:`~mambarec_pyg.nn.ModalityFusion`), final
  :math:`\mathbf{C} + \mathrm{side}`;
* loss :math:`\mathrm{BPR} + \lambda_{reg}\frac{1}{2B}(\|e_u\|^2 + \|e_i\|^2 +
  \|e_j\|^2) + \lambda_{cl}(\mathrm{InfoNCE}(\mathrm{side}_i, \mathbf{C}_i) +
  \mathrm{InfoNCE}(\mathrm{side}_u, \mathbf{C}_u))` with temperature 0.2 and
  :math:`B` the configured batch size;
* protocol: Adam with the learning rate decayed by :math:`0.96^{e/50}`;
* on several processes (:mod:`~mambarec_pyg.train.distributed`), as MambaRec's loss:
  BPR and the regulariser per triple, the InfoNCE terms on the gathered rows of the
  global batch.

MMRec's code and the paper agree on these; MMRec's unused options (``lambda_coeff``,
``tau = 0.5``) are not exposed.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Dict

from ..config import ConfigError, ModelConfig, check_choice, check_positive_int
from .multiview import MultiViewRecommender, MultiViewSpec
from .registry import register

__all__ = ['MGCN', 'MGCNConfig']


@dataclass
class MGCNConfig(ModelConfig):
    """MGCN (MMRec's ``MGCN.yaml``)."""

    #: width d of the embeddings.
    embedding_size: int = 64
    #: LightGCN layers on the user-item graph.
    n_ui_layers: int = 2
    #: propagation layers on each item-item kNN graph.
    n_layers: int = 1
    #: neighbours kept per item in the kNN graphs (the item itself included).
    knn_k: int = 10
    #: weight of the L2 penalty on the batch's final embeddings.
    reg_weight: float = 1e-4
    #: weight of the InfoNCE term (MMRec's ``cl_loss``; grid [0.001, 0.01, 0.1],
    #: the official code fixes 0.01).
    cl_weight: float = 0.01
    #: sparse propagation: ``'fused'`` or ``'pyg'`` (see MambaRecConfig).
    propagation: str = 'fused'
    #: raw feature tables are trainable parameters (as released); false freezes
    #: them (no gradient and no optimizer state; they share the data's memory).
    trainable_features: bool = True

    GRID: ClassVar[Dict[str, list]] = {'model.cl_weight': [0.001, 0.01, 0.1]}

    def __post_init__(self) -> None:
        for name in ('embedding_size', 'knn_k'):
            check_positive_int(f'model.{name}', getattr(self, name))
        for name in ('n_ui_layers', 'n_layers'):
            if getattr(self, name) < 0:
                raise ConfigError(f'model.{name}: expected an integer >= 0, got '
                                  f'{getattr(self, name)!r}')
        for name in ('reg_weight', 'cl_weight'):
            if getattr(self, name) < 0:
                raise ConfigError(f'model.{name}: expected a weight >= 0, got '
                                  f'{getattr(self, name)!r}')
        check_choice('model.propagation', self.propagation, ('fused', 'pyg'))


@register('mgcn')
class MGCN(MultiViewRecommender):
    """MGCN: the multi-view encoder without DREAM, MMD and the reduction (see the
    module docstring)."""

    config_class = MGCNConfig
    stochastic_training = False
    protocol = {'lr_decay': 0.96, 'weight_decay': 0.0}
    reference = ('Yu et al., "Multi-View Graph Convolutional Network for Multimedia '
                 'Recommendation", ACM MM 2023')

    @classmethod
    def _spec(cls, config: MGCNConfig) -> MultiViewSpec:
        c = config
        return MultiViewSpec(
            variant='reference', embedding_size=c.embedding_size,
            ui_layers=c.n_ui_layers, ii_layers=c.n_layers, knn_k=c.knn_k,
            reduction_factor=1, reduced_modalities=(), dream=False, layer_norm=False,
            dropout=0.0, trainable_features=c.trainable_features,
            reg_weight=c.reg_weight, cl=True,
            cl_weight=c.cl_weight, cl_temperature=0.2, cl_warmup_epochs=0, mmd=False,
            mmd_term=False, mmd_weight=0.0, mmd_bandwidth=1.0,
            propagation=c.propagation, fusion_rows='batch', compose_projection=True)
