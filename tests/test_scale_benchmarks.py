"""The scripts behind the "Large catalogs" figures: the memory model's formula
against plain byte counts, and smoke runs of the benchmarks."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / 'benchmarks'


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f'bench_{name}',
                                                  BENCHMARKS / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_memory_model_formula():
    mm = _module('memory_model')
    for trainable, per_value in ((True, 20.0), (False, 4.0)):
        coef, checks = mm.fit('freedom', trainable)
        # a feature value costs 4 bytes in the data, and a trainable table adds the
        # model's copy, its gradient and two Adam moments (4 x 4 bytes)
        assert coef[mm.TERMS.index('per_item_dim')] == pytest.approx(per_value, abs=1)
        # a user: its 64-d embedding, trained (64 x 4 x 4 bytes), and a little more
        assert coef[mm.TERMS.index('per_user')] == pytest.approx(64 * 16, rel=0.1)
        assert max(c['relative_error'] for c in checks) < 0.01
    # the largest catalog solves the formula for the budget
    coef, _ = mm.fit('lightgcn')
    n = mm.largest_catalog(coef, (), 2**30)
    per_item = coef[2] + coef[1] * mm.CLOTHING['users_per_item'] + \
        coef[3] * mm.CLOTHING['interactions_per_item']
    assert coef[0] + per_item * n <= 2**30 < coef[0] + per_item * (n + 1)


def test_scaling_exponent_and_one_step(tmp_path):
    sc = _module('scaling')
    n = [1e3, 1e4, 1e5]
    assert sc.fit_exponent(n, [3 * x ** 1.7 for x in n]) == pytest.approx(1.7)
    assert sc.fit_exponent([10], [1.0]) != sc.fit_exponent([10], [1.0])  # nan
    import argparse
    args = argparse.Namespace(
        child='freedom', factor=0.01, image_dim=24, text_dim=8, feature_dim=8,
        feature_dtype='float32', knn_backend='faiss', device='cpu', batch_size=256,
        eval_batch_size=64, eval_item_block=50, threads=1, cache=str(tmp_path),
        trainable_features=False)
    row = sc.child(args)
    assert row['items'] == round(23_033 * 0.01)
    assert row['epoch_s'] > 0 and row['eval_s'] > 0 and row['peak_rss_mb'] > 0
    args.child = 'knn:hnsw'
    assert sc.child(args)['time_s'] > 0


def test_feature_choices_child():
    fc = _module('feature_choices')
    assert set(fc.choices([16])) == {'raw', 'frozen', 'float16', 'pca16',
                                     'pca16-frozen'}
    row = fc.child({'preset': 'tiny', 'model': 'freedom', 'max_epochs': 1,
                    'options': {'data.feature_dim': 8,
                                'model.trainable_features': False}})
    assert row['epochs'] == 1 and 0 <= row['test']['recall@20'] <= 1


def test_scaling_skips_what_cannot_fit(tmp_path):
    import argparse
    sc = _module('scaling')
    args = argparse.Namespace(image_dim=4096, text_dim=384, feature_dtype='float32',
                              cache=str(tmp_path))
    # clothing x30 with 4096 + 384 dims: 691k items x 4480 x 4 bytes = 11.5 GiB
    assert 'feature tables' in sc._does_not_fit(args, 30, 8 * 2**30)
    assert sc._does_not_fit(args, 0.01, 8 * 2**30) == ''
