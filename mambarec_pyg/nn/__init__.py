"""Neural-network building blocks: DREAM, the dimensionality reduction, graph
propagation, MGCN's fusion and the training objectives (shared by MambaRec and the
baselines)."""
from .conv import (LightGCNConv, LightGCNPropagation, WeightedPropagation,
                   sparse_propagate)
from .dream import DREAM
from .functional import frozen_product, normalize_rows
from .fusion import ModalityFusion
from .losses import InfoNCELoss, MMDLoss, bpr_loss, emb_loss, info_nce, mmd_loss
from .projection import Projection, reduced_width
from .spectral import SpectralFilter

__all__ = [
    'DREAM',
    'Projection',
    'reduced_width',
    'LightGCNConv',
    'LightGCNPropagation',
    'WeightedPropagation',
    'sparse_propagate',
    'ModalityFusion',
    'SpectralFilter',
    'normalize_rows',
    'frozen_product',
    'bpr_loss',
    'emb_loss',
    'info_nce',
    'mmd_loss',
    'InfoNCELoss',
    'MMDLoss',
]
