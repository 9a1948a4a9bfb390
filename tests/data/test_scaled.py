"""The large synthetic presets' streaming writer (mambarec_pyg.data.scaled), on
small scale factors: the MMRec files it writes, their statistics, determinism and
bounded memory."""
from __future__ import annotations

import tracemalloc
import warnings

import numpy as np
import pytest
import torch

import mambarec_pyg.data.scaled as scaled
from mambarec_pyg.config import DataConfig
from mambarec_pyg.data import PRESETS, load_dataset, load_mmrec
from mambarec_pyg.data.scaled import SCALED_PRESETS, ScaledPreset, write_scaled
from mambarec_pyg.errors import DataError

SMALL = ScaledPreset('clothing', 0.04, image_dim=96, text_dim=24)


@pytest.fixture(scope='module')
def written(tmp_path_factory):
    root = tmp_path_factory.mktemp('scaled')
    write_scaled(SMALL, root, 'a', seed=5)
    return root


def test_presets_are_multiples_of_clothing():
    c = PRESETS['clothing']
    for name, f in (('clothing-x10', 10), ('clothing-x100', 100)):
        p = SCALED_PRESETS[name].sizes()
        assert (p.num_users, p.num_items, p.num_interactions, p.num_topics) == \
            (c.num_users * f, c.num_items * f, c.num_interactions * f,
             c.num_topics * f)
    assert SCALED_PRESETS['clothing-x10'].image_dim == 4096
    assert SCALED_PRESETS['clothing-x100'].image_dim == 512


def test_files_load_with_the_preset_statistics(written):
    p = SMALL.sizes()
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # no duplicate pair, no user left out
        data = load_mmrec(written, 'a')
    assert data['user'].num_nodes == p.num_users
    assert data['item'].num_nodes == p.num_items
    assert data['item']['image'].shape == (p.num_items, 96)
    assert data['item']['text'].shape == (p.num_items, 24)
    store = data['user', 'interacts', 'item']
    edges = torch.cat([store.edge_index, store.valid_edge_label_index,
                       store.test_edge_label_index], dim=1)
    total = edges.size(1)
    assert abs(total - p.num_interactions) <= 0.01 * p.num_interactions
    user_deg = torch.bincount(edges[0], minlength=p.num_users)
    item_deg = torch.bincount(edges[1], minlength=p.num_items)
    assert int(user_deg.min()) >= 5
    assert int(item_deg.min()) >= 1
    assert (item_deg >= 5).float().mean() > 0.95
    # a long tail: the most popular tenth of the items has far more than a tenth
    top = item_deg.sort(descending=True).values[:p.num_items // 10].sum()
    assert top / total > 0.2
    # every user has one validation and one test interaction at least
    assert torch.unique(store.valid_edge_label_index[0]).numel() == p.num_users
    # features: non-negative image block, unit-norm text block, topic signal
    assert float(data['item']['image'].min()) >= 0
    norms = data['item']['text'].norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    topic = torch.from_numpy(np.load(written / 'a' / 'item_topic.npy'))
    x = torch.nn.functional.normalize(data['item']['text'], dim=1)
    same = topic[:, None] == topic[None, :]
    sim = x @ x.t()
    assert float(sim[same].mean()) > float(sim[~same].mean()) + 0.2


def test_same_seed_same_bytes(written, tmp_path):
    write_scaled(SMALL, tmp_path, 'a', seed=5)
    for f in sorted((written / 'a').iterdir()):
        assert (tmp_path / 'a' / f.name).read_bytes() == f.read_bytes(), f.name
    write_scaled(SMALL, tmp_path, 'b', seed=6)
    assert (tmp_path / 'b' / 'b.inter').read_bytes() != \
        (written / 'a' / 'a.inter').read_bytes()


def test_memory_stays_below_the_feature_table(tmp_path, monkeypatch):
    # features are computed ITEM_CHUNK rows at a time: with 32-row chunks the
    # table (1152 x 2048 float32) is never held whole
    monkeypatch.setattr(scaled, 'ITEM_CHUNK', 32)
    p = ScaledPreset('clothing', 0.05, image_dim=2048, text_dim=16)
    table = p.sizes().num_items * 2048 * 4
    tracemalloc.start()
    try:
        write_scaled(p, tmp_path, 'm', seed=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < table / 2, (peak, table)


def test_load_dataset_with_widths(monkeypatch, tmp_path):
    monkeypatch.setenv('MAMBAREC_CACHE', str(tmp_path))
    monkeypatch.setitem(SCALED_PRESETS, 'clothing-x10',
                        ScaledPreset('clothing', 0.02, image_dim=4096))
    data = load_dataset(DataConfig(synthetic='clothing-x10', synthetic_image_dim=32,
                                   synthetic_text_dim=8))
    assert data['item']['image'].shape[1] == 32
    assert data['item']['text'].shape[1] == 8
    assert (tmp_path / 'synthetic' / 'synthetic-clothing-x10-0-32x8').is_dir()
    with pytest.raises(DataError, match='synthetic_image_dim'):
        load_dataset(DataConfig(synthetic='tiny', synthetic_image_dim=32))
    assert scaled.MIN_ITEM_INTERACTIONS == 5
