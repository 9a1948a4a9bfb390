"""The memory model of LightGCN, FREEDOM and MambaRec: bytes per user, per item, per
interaction and per feature dimension, and the largest catalog that fits a machine.

The static memory of a training run is what lives for the whole run: the data
(feature tables, interactions), the model's parameters with their gradients and
Adam state (two more copies), and its buffers (the propagation graphs). It is
linear in the sizes,

    bytes = c0 + c_user U + c_item N + c_inter E + c_feat N D
            + c_image D_image + c_text D_text + c_image2 D_image^2,

(E the training interactions, D = D_image + D_text the feature widths; c_feat covers
the feature tables, c_image and c_text the projections from each modality to the
embedding width, c_image2 MambaRec's reduced projection of the image block, of
D_image x D_image / r weights). This script counts
the bytes of every tensor of a freshly built model (shared storage once) on small
synthetic datasets of independently varied sizes, fits the coefficients exactly by
least squares, checks the formula on further datasets it was not fitted on (the
relative error must stay below 1%), and prints the largest catalog with Clothing's
users per item and interactions per item that fits 24 GiB (a CPU machine) and 80 GiB
(a GPU) under each feature choice: raw trainable tables (4096 + 384 dims), frozen
tables, PCA to 256 dims per modality (trainable or frozen). float16 storage is not a
row: it halves the data's tables, but the models hold float32 parameter tables (a
frozen table is then a float32 copy, not shared), so it helps loading, the kNN search
and PCA, not training.

Not counted (and measured by ``benchmarks/scaling.py`` as peak memory): the
activations of a training batch (proportional to the batch size, not the catalog),
the evaluation scores (``eval_batch_size x N`` floats, or ``eval_batch_size x
(eval_item_block + K)``), the kNN search's blocks and the interpreter itself.

    python benchmarks/memory_model.py [--out benchmarks/results/memory_model.json]
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch

from mambarec_pyg.config import model_config_class
from mambarec_pyg.data import make_synthetic
from mambarec_pyg.data.synthetic import SyntheticPreset
from mambarec_pyg.io import write_json
from mambarec_pyg.models.registry import get_model_class

MODELS = ('lightgcn', 'freedom', 'mambarec')
TERMS = ('constant', 'per_user', 'per_item', 'per_interaction', 'per_item_dim',
         'per_image_dim', 'per_text_dim', 'per_image_dim_squared')
#: (users, items, interactions, image dim, text dim) of the fitting datasets
FIT = [(120, 60, 1000, 64, 32), (240, 60, 1600, 64, 32), (120, 150, 1600, 64, 32),
       (120, 60, 1500, 64, 32), (120, 60, 1000, 128, 32), (200, 100, 1400, 16, 48),
       (160, 90, 1300, 96, 24), (120, 60, 1000, 64, 96), (180, 70, 1200, 32, 32),
       (130, 110, 1300, 112, 8), (140, 80, 1100, 48, 64)]
#: datasets the formula is checked on
CHECK = [(300, 200, 2600, 80, 40), (150, 120, 1500, 48, 16)]
#: Clothing's users and interactions per item
CLOTHING = {'users_per_item': 39_387 / 23_033,
            'interactions_per_item': 278_677 / 23_033}
#: feature choices: (widths, trainable, bytes per stored feature value)
CHOICES = {'raw trainable (4096+384)': ((4096, 384), True, 4),
           'frozen (4096+384)': ((4096, 384), False, 4),
           'PCA 256 per modality, trainable': ((256, 256), True, 4),
           'PCA 256 per modality, frozen': ((256, 256), False, 4)}


def tensor_bytes(t: torch.Tensor) -> Tuple[int, List[int]]:
    """Bytes of ``t`` and the data pointers of its storages (sparse: its parts)."""
    if t.layout == torch.sparse_csr:
        parts = [t.crow_indices(), t.col_indices(), t.values()]
    elif t.layout == torch.sparse_coo:
        parts = [t._indices(), t._values()]
    else:
        parts = [t]
    return (sum(p.numel() * p.element_size() for p in parts),
            [p.untyped_storage().data_ptr() for p in parts])


def static_bytes(model: torch.nn.Module, data) -> int:
    """Data + parameters (x4 when trainable: value, gradient, two Adam moments) +
    buffers, each storage counted once."""
    seen, total = set(), 0

    def add(t: torch.Tensor, copies: int = 1) -> None:
        nonlocal total
        n, ptrs = tensor_bytes(t)
        if ptrs[0] in seen:
            return
        seen.update(ptrs)
        total += n * copies

    for m in data.modalities:
        add(data['item'][m])
    store = data['user', 'interacts', 'item']
    for key in ('edge_index', 'valid_edge_label_index', 'test_edge_label_index'):
        add(store[key])
    for p in model.parameters():
        add(p.detach(), 4 if p.requires_grad else 1)
    for b in model.buffers():
        add(b)
    return total


def dataset(users: int, items: int, inter: int, image: int, text: int):
    p = SyntheticPreset(users, items, inter, image_dim=image, text_dim=text,
                        num_topics=4)
    return make_synthetic(p, 0)


def row(data, image: int, text: int) -> List[float]:
    n = int(data['item'].num_nodes)
    e = int(data['user', 'interacts', 'item'].edge_index.size(1))
    return [1.0, float(data['user'].num_nodes), float(n), float(e),
            float(n * (image + text)), float(image), float(text), float(image) ** 2]


def build(name: str, data, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    config = model_config_class(name)(**options)
    cls = get_model_class(name)
    return cls(cls.prepare(data, config), config)


def fit(name: str, trainable: bool = True) -> Tuple[np.ndarray, List[dict]]:
    """The coefficients of ``name`` (trainable or frozen tables) and the check rows."""
    options = {} if name == 'lightgcn' else {'trainable_features': trainable}
    a, b = [], []
    for sizes in FIT:
        data = dataset(*sizes)
        dims = (0, 0) if name == 'lightgcn' else sizes[3:]
        a.append(row(data, *dims))
        b.append(static_bytes(build(name, data, **options), data) -
                 (0 if name != 'lightgcn' else
                  sum(data['item'][m].numel() * 4 for m in data.modalities)))
    a = np.array(a)
    used = a.any(axis=0)  # LightGCN: no feature terms
    coef = np.zeros(a.shape[1])
    coef[used], *_ = np.linalg.lstsq(a[:, used], np.array(b, dtype=np.float64),
                                     rcond=None)
    checks = []
    for sizes in CHECK:
        data = dataset(*sizes)
        dims = (0, 0) if name == 'lightgcn' else sizes[3:]
        counted = static_bytes(build(name, data, **options), data) - \
            (0 if name != 'lightgcn' else
             sum(data['item'][m].numel() * 4 for m in data.modalities))
        predicted = float(np.dot(coef, row(data, *dims)))
        checks.append({'sizes': sizes, 'counted': counted, 'predicted': predicted,
                       'relative_error': abs(predicted - counted) / counted})
    return coef, checks


def largest_catalog(coef: np.ndarray, widths: Tuple[int, ...], budget: float,
                    feature_bytes_ratio: float = 1.0) -> int:
    """The most items (with Clothing's users and interactions per item) whose static
    memory fits ``budget`` bytes; ``feature_bytes_ratio`` scales the per-item-dim
    term."""
    image, text = (tuple(widths) + (0, 0))[:2]
    per_item = coef[2] + coef[1] * CLOTHING['users_per_item'] + \
        coef[3] * CLOTHING['interactions_per_item'] + \
        coef[4] * (image + text) * feature_bytes_ratio
    fixed = coef[0] + coef[5] * image + coef[6] * text + coef[7] * image ** 2
    return int(max(0.0, (budget - fixed) / per_item))


def main(argv=None) -> Dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default=str(Path(__file__).parent / 'results' /
                                             'memory_model.json'))
    args = parser.parse_args(argv)
    result: Dict = {'terms': TERMS, 'models': {}}
    for name in MODELS:
        entry = {}
        for trainable in ((True, ) if name == 'lightgcn' else (True, False)):
            coef, checks = fit(name, trainable)
            key = 'trainable' if trainable else 'frozen'
            entry[key] = {'coefficients': dict(zip(TERMS, coef.tolist())),
                          'checks': checks,
                          'max_relative_error': max(c['relative_error']
                                                    for c in checks)}
        fits = {}
        for choice, (widths, trainable, size) in CHOICES.items():
            if name == 'lightgcn':
                widths, trainable, size = (), True, 4
            coef = np.array(list(entry['trainable' if trainable else 'frozen']
                                 ['coefficients'].values()))
            fits[choice] = {f'{gb} GiB': largest_catalog(coef, widths, gb * 2**30,
                                                        size / 4)
                            for gb in (24, 80)}
        entry['largest_catalog_items'] = fits
        result['models'][name] = entry
    for name, entry in result['models'].items():
        print(f'\n{name}')
        for key in ('trainable', 'frozen'):
            if key in entry:
                c = entry[key]['coefficients']
                print(f"  {key:9}: " + ', '.join(f'{t} {c[t]:.1f} B' for t in TERMS) +
                      f"  (check error {entry[key]['max_relative_error']:.2%})")
        for choice, fits in entry['largest_catalog_items'].items():
            print(f'  {choice:34}: ' + ', '.join(f'{k}: {v:,} items'
                                                for k, v in fits.items()))
            if name == 'lightgcn':
                break
    write_json(args.out, result)
    return result


if __name__ == '__main__':
    main()
