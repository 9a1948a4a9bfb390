"""Neural-network building blocks of MambaRec: DREAM, the dimensionality reduction,
graph propagation and the training objectives."""
from .conv import LightGCNPropagation, WeightedPropagation
from .dream import DREAM
from .losses import InfoNCELoss, MMDLoss, bpr_loss, info_nce, mmd_loss
from .projection import Projection, reduced_width

__all__ = [
    'DREAM',
    'Projection',
    'reduced_width',
    'LightGCNPropagation',
    'WeightedPropagation',
    'bpr_loss',
    'info_nce',
    'mmd_loss',
    'InfoNCELoss',
    'MMDLoss',
]
