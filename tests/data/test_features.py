"""Feature tables that fit: PCA reduction (against numpy's SVD), its cache, float16
storage, and training on reduced / float16 features."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import mambarec_pyg.data.features as features_module
from mambarec_pyg.config import DataConfig
from mambarec_pyg.data import load_dataset
from mambarec_pyg.data.features import FeatureReduction, pca_fit, pca_transform
from mambarec_pyg.data.mmrec import read_features
from mambarec_pyg.errors import ConfigError, DataError

from support import train_through_cli


def _numpy_pca(x: np.ndarray, dim: int) -> np.ndarray:
    xc = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    v = vt[:dim].T
    sign = np.sign(v[np.abs(v).argmax(axis=0), np.arange(dim)])
    return xc @ (v * sign)


def test_pca_matches_numpy_svd(monkeypatch):
    monkeypatch.setattr(features_module, 'BLOCK_ENTRIES', 40)  # blocks of 2 rows
    rng = np.random.default_rng(0)
    # distinct singular values, so the components are defined up to sign
    x = rng.standard_normal((57, 20)) @ np.diag(np.linspace(3, 0.5, 20)) + 1.5
    got = pca_transform(torch.from_numpy(x), *pca_fit(torch.from_numpy(x), 6))
    np.testing.assert_allclose(got.numpy(), _numpy_pca(x, 6), rtol=1e-9, atol=1e-9)


def test_pca_checks_dim():
    with pytest.raises(DataError, match='dim'):
        pca_fit(torch.randn(5, 3), 4)
    with pytest.raises(ConfigError, match='data.feature_dtype'):
        DataConfig(synthetic='tiny', feature_dtype='int8')
    with pytest.raises(ConfigError, match='data.feature_dim'):
        DataConfig(synthetic='tiny', feature_dim=-1)


def test_reduction_is_cached(tmp_path, monkeypatch):
    data = load_dataset(DataConfig(synthetic='tiny'))
    t = FeatureReduction(8, processed_dir=tmp_path)
    first = t(data)
    assert first['item']['image'].shape == (60, 8)
    assert data['item']['image'].shape == (60, 64)  # the input is not modified
    assert len(list(tmp_path.glob('FeatureReduction-*.pt'))) == 2
    monkeypatch.setattr(features_module, 'pca_fit',
                        lambda *a: pytest.fail('recomputed instead of cached'))
    again = FeatureReduction(8, processed_dir=tmp_path)(data)
    for m in data.modalities:
        assert torch.equal(first['item'][m], again['item'][m])


def test_load_dataset_reduced_float16():
    data = load_dataset(DataConfig(synthetic='tiny', feature_dim=16,
                                   feature_dtype='float16'))
    assert data['item']['image'].dtype == torch.float16
    assert data['item']['image'].shape == (60, 16)
    assert data['item']['text'].shape == (60, 16)
    raw = load_dataset(DataConfig(synthetic='tiny'))
    want = pca_transform(raw['item']['image'].half(),
                         *pca_fit(raw['item']['image'].half(), 16))
    assert torch.equal(data['item']['image'], want)


def test_float16_overflow_is_refused(tmp_path):
    path = tmp_path / 'image_feat.npy'
    x = np.ones((4, 3), dtype=np.float32)
    x[2, 1] = 1e6
    np.save(path, x)
    assert read_features(path, 4).dtype == torch.float32
    with pytest.raises(DataError, match='float16'):
        read_features(path, 4, dtype='float16')


@pytest.mark.parametrize('name', ['freedom', 'lightgcn', 'mambarec'])
def test_trains_on_reduced_float16_frozen_features(tmp_path, name):
    flags = ['--data.feature-dim', '16', '--data.feature-dtype', 'float16',
             '--train.max-epochs', '2', '--train.batch-size', '256']
    if name != 'lightgcn':
        flags += ['--model.trainable-features', 'false']
    results = train_through_cli(tmp_path, name, *flags)
    assert math.isfinite(results['test']['recall@20'])


@pytest.mark.parametrize('dtype', ['float32', 'float16'])
def test_feature_file_is_copied_once(tmp_path, dtype):
    # read through a memory map: the only allocation of the table's size is the
    # tensor returned (float64 file -> float32 / float16 table)
    import tracemalloc
    path = tmp_path / 'image_feat.npy'
    np.save(path, np.random.default_rng(0).standard_normal((4000, 256)))
    tracemalloc.start()
    try:
        x = read_features(path, 4000, dtype=dtype)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    table = x.numel() * x.element_size()
    assert str(x.dtype) == f'torch.{dtype}'
    assert table <= peak < 1.5 * table, (peak, table)
