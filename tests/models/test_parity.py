"""Weight-transplant parity with the authors' released MambaRec (the acceptance test).

The fixture holds the released implementation's weights, outputs, loss parts and
gradients on a 40-user, 30-item dataset, computed in float64 with dropout 0
(``tests/fixtures/released_tiny/README.md``). Everything must match to 1e-6 relative,
with the fixture's graphs injected and with the graphs this library builds.
"""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from support import default_dtype

from mambarec_pyg.config import MambaRecConfig
from mambarec_pyg.data import load_mmrec
from mambarec_pyg.data.sampling import BPRBatch
from mambarec_pyg.models.mambarec import MambaRec

RTOL = 1e-6



@pytest.fixture(scope='module')
def golden(released_tiny_dir):
    return {
        'config': json.loads((released_tiny_dir / 'golden.json').read_text())['config'],
        'weights': dict(np.load(released_tiny_dir / 'weights.npz')),
        'outputs': dict(np.load(released_tiny_dir / 'outputs.npz')),
        'grads': dict(np.load(released_tiny_dir / 'grads.npz')),
        'data': load_mmrec(released_tiny_dir, 'tiny'),
    }


def _config(g) -> MambaRecConfig:
    c = g['config']
    assert c['dtype'] == 'float64'
    return MambaRecConfig(
        variant='reference', embedding_size=c['embedding_size'],
        ui_layers=c['n_ui_layers'], ii_layers=c['n_layers'], knn_k=c['knn_k'],
        reduction_factor=c['reduction_factor'], reg_weight=c['reg_weight'],
        cl_weight=c['cl_weight'], cl_temperature=c['cl_temperature'],
        mmd_weight=c['mmd_weight'], mmd_bandwidth=c['mmd_bandwidth'],
        dropout=c['dropout'])


def _model(g, graphs: str, **overrides) -> MambaRec:
    config = dataclasses.replace(_config(g), **overrides)
    with default_dtype(torch.float64):
        model = MambaRec(g['data'], config)
    if graphs == 'provided':
        o = g['outputs']
        model.set_graphs(o['norm_adj'], o['R_hat'], {'image': o['image_item_graph'],
                                                     'text': o['text_item_graph']})
    model.load_released_state_dict(g['weights'])
    return model


def _assert_close(actual: torch.Tensor, expected: np.ndarray, what: str, floor: float = 0.0):
    actual = actual.detach().numpy()
    assert actual.shape == expected.shape, what
    scale = max(float(np.abs(expected).max()), floor)
    err = float(np.abs(actual - expected).max()) / scale if scale > 0 else \
        float(np.abs(actual).max())
    assert err <= RTOL, f'{what}: relative error {err:.3g} > {RTOL}'


@pytest.mark.parametrize('graphs', ['provided', 'built'])
def test_eval_mode_embeddings(golden, graphs):
    model = _model(golden, graphs).eval()
    o = golden['outputs']
    out = model.encode()
    _assert_close(out.user, o['eval_user_emb'], 'eval_user_emb')
    _assert_close(out.item, o['eval_item_emb'], 'eval_item_emb')
    _assert_close(out.alignment['image'], o['eval_dream_image'], 'eval_dream_image')
    _assert_close(out.alignment['text'], o['eval_dream_text'], 'eval_dream_text')
    user, item = model(golden['data'])
    _assert_close(user, o['eval_user_emb'], 'forward() user')
    _assert_close(item, o['eval_item_emb'], 'forward() item')


@pytest.mark.parametrize('graphs', ['provided', 'built'])
def test_train_mode_embeddings(golden, graphs):
    model = _model(golden, graphs).train()
    o = golden['outputs']
    out = model.encode()
    _assert_close(out.user, o['train_user_emb'], 'train_user_emb')
    _assert_close(out.item, o['train_item_emb'], 'train_item_emb')
    _assert_close(out.side, o['train_side'], 'train_side')
    _assert_close(out.content, o['train_content'], 'train_content')


@pytest.mark.parametrize('propagation', ['fused', 'pyg'])
@pytest.mark.parametrize('fusion_rows', ['batch', 'all'])
@pytest.mark.parametrize('graphs', ['provided', 'built'])
def test_losses_and_gradients(golden, graphs, propagation, fusion_rows):
    model = _model(golden, graphs, propagation=propagation,
                   fusion_rows=fusion_rows).train()
    o = golden['outputs']
    batch = [torch.from_numpy(o[k]) for k in ('batch_users', 'batch_pos', 'batch_neg')]
    parts = model.loss(BPRBatch(*batch, golden['config']['batch_size_for_reg']))
    for name, key in (('bpr', 'loss_bpr'), ('reg', 'loss_reg'), ('cl', 'loss_infonce'),
                      ('mmd', 'loss_mmd'), ('total', 'loss_total')):
        _assert_close(parts[name], o[key], key)
    parts['total'].backward()
    grads = model.released_state_dict(grads=True)
    expected = golden['grads']
    assert set(grads) == set(expected)
    # Projection biases feed BatchNorm in train mode: their true gradient is 0 and
    # both sides hold rounding noise (~1e-18); compare those on the global scale.
    floor = 1e-6 * max(float(np.abs(v).max()) for v in expected.values())
    for name, value in expected.items():
        _assert_close(grads[name], value, f'grad {name}', floor=floor)


def test_released_state_roundtrip(golden):
    model = _model(golden, 'provided')
    exported = model.released_state_dict()
    assert set(exported) == set(golden['weights'])
    for name, value in golden['weights'].items():
        np.testing.assert_array_equal(exported[name].numpy(), value, err_msg=name)
