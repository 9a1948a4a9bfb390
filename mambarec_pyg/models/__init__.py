"""Recommendation models on one interface (:class:`Recommender`), chosen by name.

Built-in models register on import; ``mambarec models`` lists them::

    from mambarec_pyg.models import get_model_class, list_models
    Model = get_model_class('lightgcn')
    model = Model(data, Model.config_class(n_layers=3))
"""
from __future__ import annotations

from .base import Recommender, check_data
from .registry import get_config_class, get_model_class, list_models, register

# Built-in models (importing a module registers its model), in the order of the
# paper's Table 2, most-popular first.
from .popularity import Popularity, PopularityConfig  # noqa: E402
from .bpr import BPR, BPRConfig  # noqa: E402
from .lightgcn import LightGCN, LightGCNConfig  # noqa: E402
from .vbpr import VBPR, VBPRConfig  # noqa: E402
from .slmrec import SLMRec, SLMRecConfig  # noqa: E402
from .lgmrec import LGMRec, LGMRecConfig  # noqa: E402
from .freedom import FREEDOM, FREEDOMConfig  # noqa: E402
from .bm3 import BM3, BM3Config  # noqa: E402
from .mmgcn import MMGCN, MMGCNConfig  # noqa: E402
from .grcn import GRCN, GRCNConfig  # noqa: E402
from .mgcn import MGCN, MGCNConfig  # noqa: E402
from .layergcn import LayerGCN, LayerGCNConfig  # noqa: E402
from .selfcf import SelfCF, SelfCFConfig  # noqa: E402
from .dualgnn import DualGNN, DualGNNConfig  # noqa: E402
from .dragon import DRAGON, DRAGONConfig  # noqa: E402
from .smore import SMORE, SMOREConfig  # noqa: E402
from .mmgcf import MMGCF, MMGCFConfig  # noqa: E402
from .pgl import PGL, PGLConfig  # noqa: E402
from .damrs import DAMRS, DAMRSConfig  # noqa: E402
from .mambarec import MambaRec, MambaRecConfig, MambaRecOutput  # noqa: E402

__all__ = ['Recommender', 'register', 'get_model_class', 'get_config_class',
           'list_models', 'check_data', 'MambaRec', 'MambaRecConfig',
           'MambaRecOutput', 'Popularity', 'PopularityConfig', 'BPR', 'BPRConfig',
           'LightGCN', 'LightGCNConfig', 'MGCN', 'MGCNConfig', 'LayerGCN',
           'LayerGCNConfig', 'SelfCF', 'SelfCFConfig',
           'DualGNN', 'DualGNNConfig', 'DRAGON', 'DRAGONConfig']
