"""Neural-network building blocks: DREAM, the dimensionality reduction, graph
propagation (LightGCN, GRCN's edge attention, MMGCN's convolution, LGMRec's
hypergraph layer), the sparse matrices models hold, MGCN's fusion, SMORE's spectral
filters, edge pruning and the training objectives (shared by MambaRec and the
baselines)."""
from .conv import (LightGCNConv, LightGCNPropagation, WeightedPropagation,
                   sparse_propagate)
from .dream import DREAM
from .edge_attention import (EdgePattern, GRCNAttention, RefinedPropagation, edge_dot,
                             edge_spmm, row_softmax)
from .functional import frozen_product, normalize_rows
from .fusion import ModalityFusion
from .hypergraph import hcl_loss, hypergraph_propagation, row_logsumexp_sum
from .losses import (InfoNCELoss, MMDLoss, bpr_loss, emb_loss, info_nce, mmd_loss,
                     stacked_square_mean)
from .mmgcn_conv import MMGCNConv, mean_adjacency
from .projection import Projection, reduced_width
from .sparse import SparseGraphs, as_csr, edge_matrix, user_item_matrices
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
    'EdgePattern',
    'GRCNAttention',
    'RefinedPropagation',
    'edge_dot',
    'edge_spmm',
    'row_softmax',
    'MMGCNConv',
    'mean_adjacency',
    'hypergraph_propagation',
    'hcl_loss',
    'row_logsumexp_sum',
    'SparseGraphs',
    'user_item_matrices',
    'edge_matrix',
    'as_csr',
    'normalize_rows',
    'frozen_product',
    'bpr_loss',
    'emb_loss',
    'info_nce',
    'mmd_loss',
    'stacked_square_mean',
    'InfoNCELoss',
    'MMDLoss',
]
