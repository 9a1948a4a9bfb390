"""The numbers and settings of the MambaRec paper's experiments (Ren, Ju and Lee,
"Modality Alignment with Multi-scale Bilateral Attention for Multimodal
Recommendation", CIKM 2025), for printing beside ours.

* :data:`TABLE2` -- Table 2 (Recall@10/20, NDCG@10/20 on test, Baby/Sports/Clothing);
* :data:`TABLE3` -- Table 3 (MambaRec with text only, visual only, both);
* :data:`CL_WEIGHTS`, :data:`MMD_WEIGHTS`, :data:`REDUCTION_FACTORS` -- the values
  swept in Figures 4-6, with what the text says about each (:data:`GRID_SOURCES`).

The paper prints Figures 3-8 as images only; their numbers are not available and
nothing here pretends otherwise.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

__all__ = ['METRICS', 'DATASETS', 'TABLE2', 'TABLE3', 'CL_WEIGHTS', 'MMD_WEIGHTS',
           'REDUCTION_FACTORS', 'GRID_SOURCES', 'paper_dataset', 'table2_value',
           'table3_value', 'SIGNIFICANCE_LEVEL']

#: the metrics of Tables 2 and 3, in the paper's order.
METRICS = ('recall@10', 'recall@20', 'ndcg@10', 'ndcg@20')
#: the paper's datasets (Amazon 5-core subsets, Table 1).
DATASETS = ('baby', 'sports', 'clothing')
#: the significance level of the paper's t-tests (Table 2 caption).
SIGNIFICANCE_LEVEL = 0.01

_T2 = {
    'bpr': ((0.0382, 0.0595, 0.0214, 0.0263), (0.0417, 0.0633, 0.0232, 0.0288),
            (0.0200, 0.0295, 0.0111, 0.0135)),
    'lightgcn': ((0.0453, 0.0728, 0.0246, 0.0317), (0.0542, 0.0837, 0.0300, 0.0376),
                 (0.0338, 0.0517, 0.0185, 0.0230)),
    'vbpr': ((0.0425, 0.0663, 0.0223, 0.0284), (0.0561, 0.0857, 0.0307, 0.0384),
             (0.0281, 0.0410, 0.0157, 0.0190)),
    'mmgcn': ((0.0424, 0.0668, 0.0223, 0.0286), (0.0386, 0.0627, 0.0204, 0.0266),
              (0.0224, 0.0362, 0.0118, 0.0153)),
    'grcn': ((0.0534, 0.0831, 0.0288, 0.0365), (0.0607, 0.0922, 0.0325, 0.0406),
             (0.0428, 0.0663, 0.0227, 0.0287)),
    'slmrec': ((0.0545, 0.0837, 0.0296, 0.0371), (0.0676, 0.1017, 0.0374, 0.0462),
               (0.0461, 0.0696, 0.0249, 0.0308)),
    'freedom': ((0.0627, 0.0992, 0.0330, 0.0424), (0.0717, 0.1089, 0.0385, 0.0481),
                (0.0629, 0.0941, 0.0341, 0.0420)),
    'mgcn': ((0.0620, 0.0964, 0.0339, 0.0427), (0.0729, 0.1106, 0.0397, 0.0496),
             (0.0641, 0.0945, 0.0347, 0.0428)),
    'lgmrec': ((0.0644, 0.1002, 0.0349, 0.0440), (0.0720, 0.1068, 0.0390, 0.0480),
               (0.0555, 0.0828, 0.0302, 0.0371)),
    'mambarec': ((0.0660, 0.1013, 0.0363, 0.0454), (0.0763, 0.1147, 0.0416, 0.0514),
                 (0.0673, 0.0996, 0.0367, 0.0449)),
}

#: Table 2: ``TABLE2[model][dataset][metric]`` (test, at the best valid epoch).
#: Most-popular and BM3 are not in it.
TABLE2: Dict[str, Dict[str, Dict[str, float]]] = {
    model: {d: dict(zip(METRICS, values)) for d, values in zip(DATASETS, rows)}
    for model, rows in _T2.items()
}

_T3 = {
    'text': ((0.0561, 0.0863, 0.0307, 0.0384), (0.0685, 0.1024, 0.0373, 0.0460),
             (0.0601, 0.0900, 0.0327, 0.0403)),
    'visual': ((0.0485, 0.0761, 0.0270, 0.0341), (0.0575, 0.0852, 0.0310, 0.0382),
               (0.0406, 0.0627, 0.0217, 0.0273)),
    'both': _T2['mambarec'],
}

#: Table 3: ``TABLE3[input][dataset][metric]`` with input ``'text'``, ``'visual'``
#: (the image features) or ``'both'`` (the paper's "Full", equal to Table 2's row).
TABLE3: Dict[str, Dict[str, Dict[str, float]]] = {
    setting: {d: dict(zip(METRICS, values)) for d, values in zip(DATASETS, rows)}
    for setting, rows in _T3.items()
}

#: Figure 4: the InfoNCE weight lambda_cl. The text (§5.4.1) gives the range
#: [1e-4, 1] and names 1e-4 and 0.01; the decades in between are assumed.
CL_WEIGHTS: Tuple[float, ...] = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
#: Figure 5: the MMD weight lambda_mmd, the values of §5.1.4 (0.15 is the best).
MMD_WEIGHTS: Tuple[float, ...] = (0.1, 0.15, 0.2)
#: Figures 5 and 6: the reduction factor r. The text names only 8 (the default) and
#: "no compression" (r = 1, the reference of Figure 6's percentages); the powers of
#: two in between and 16 are assumed.
REDUCTION_FACTORS: Tuple[int, ...] = (1, 2, 4, 8, 16)

#: Where each swept grid comes from, for the reports.
GRID_SOURCES = {
    'cl_weight': 'paper §5.4.1: range [1e-4, 1], best 0.01 (intermediate decades '
                 'assumed)',
    'mmd_weight': 'paper §5.1.4: [0.1, 0.15, 0.2]; §5.4.2: best 0.15 with r = 8',
    'reduction_factor': 'paper §5.1.4/§5.4.3: r = 8 and r = 1 (uncompressed); 2, 4, '
                        '16 assumed (the figures print no values)',
}


def paper_dataset(name: Optional[str]) -> Optional[str]:
    """The paper's dataset ``name`` refers to (``'baby'``, ``'sports'``,
    ``'clothing'``, case-insensitive), else ``None``."""
    if not name:
        return None
    low = name.lower()
    return low if low in DATASETS else None


def table2_value(model: str, dataset: Optional[str], metric: str) -> Optional[float]:
    """The paper's Table 2 entry, or ``None`` (model or dataset not in it)."""
    d = paper_dataset(dataset)
    return TABLE2.get(model, {}).get(d, {}).get(metric) if d else None


def table3_value(setting: str, dataset: Optional[str], metric: str) -> Optional[float]:
    """The paper's Table 3 entry for ``setting`` (``'text'``, ``'visual'``,
    ``'both'``), or ``None``."""
    d = paper_dataset(dataset)
    return TABLE3.get(setting, {}).get(d, {}).get(metric) if d else None
