"""``model.trainable_features false`` for every model with raw feature tables: the
tables get no gradient and share the data's memory; the default keeps them
trainable copies."""
from __future__ import annotations

import pytest
import torch

from mambarec_pyg.config import model_config_class
from mambarec_pyg.data import make_synthetic
from mambarec_pyg.models.registry import get_model_class

from support import loss_and_grads, random_batch

RAW_TABLE_MODELS = ('bm3', 'freedom', 'lattice', 'pgl', 'smore', 'mgcn', 'mambarec')


@pytest.fixture(scope='module')
def data():
    return make_synthetic('tiny', 0)


def _tables(model):
    return {n: p for n, p in model.named_parameters(remove_duplicate=False)
            if n.startswith('features.')} or \
        {n: b for n, b in model.named_buffers() if n.startswith('features.')}


@pytest.mark.parametrize('name', RAW_TABLE_MODELS)
def test_frozen_tables(name, data):
    cls = get_model_class(name)
    torch.manual_seed(0)
    trained = cls(data, model_config_class(name)())
    torch.manual_seed(0)
    frozen = cls(data, model_config_class(name)(trainable_features=False))
    t_tables, f_tables = _tables(trained), _tables(frozen)
    assert set(t_tables) == set(f_tables) and len(t_tables) == len(data.modalities)
    for n, table in t_tables.items():
        m = n.split('.')[-1]
        assert table.requires_grad
        assert table.data_ptr() != data['item'][m].data_ptr()  # a copy
        assert not f_tables[n].requires_grad
        assert f_tables[n].data_ptr() == data['item'][m].data_ptr()  # shared
        assert torch.equal(f_tables[n], data['item'][m])
    batch = random_batch(data, 64)
    _, grads = loss_and_grads(trained, batch)
    assert all(grads[n] is not None for n in t_tables if n in grads)
    _, grads = loss_and_grads(frozen, batch)
    assert all(grads.get(n) is None for n in f_tables)
    others = [n for n, g in grads.items() if not n.startswith('features.')]
    assert others and any(grads[n] is not None for n in others)
