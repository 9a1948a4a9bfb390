"""The graph transforms: graphs on the data, computed as the plain builders do, and
cached by content in the processed directory."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import HeteroData

from mambarec_pyg.data import load_mmrec, write_mmrec
from mambarec_pyg.data.graphs import item_item_graph, normalized_adjacency
from mambarec_pyg.data.transforms import (ItemKNN, UserItemNorm, apply_transforms,
                                          knn_relation)

UI = ('user', 'interacts', 'item')


def _data(num_items=20, seed=0) -> HeteroData:
    g = torch.Generator().manual_seed(seed)
    data = HeteroData()
    data['user'].num_nodes = 12
    data['item'].num_nodes = num_items
    data['item'].image = torch.rand(num_items, 8, generator=g)
    data['item'].text = torch.randn(num_items, 5, generator=g)
    data.modalities = ('image', 'text')
    users = torch.arange(12).repeat_interleave(4)
    items = torch.randint(0, num_items, (48, ), generator=g)
    data[UI].edge_index = torch.unique(torch.stack([users, items]), dim=1)
    return data


def _dense_from_edges(edge_index, weight, n_targets, n_sources):
    M = np.zeros((n_targets, n_sources))
    np.add.at(M, (edge_index[1].numpy(), edge_index[0].numpy()), weight.numpy())
    return M


def test_user_item_norm_matches_the_adjacency():
    data = _data()
    out = UserItemNorm()(data)
    assert 'edge_weight' not in data[UI]  # the input is not modified
    w = out[UI].edge_weight
    ei = out[UI].edge_index
    g = normalized_adjacency(ei, 12, 20, dtype=torch.float64, layout='csr')
    R = np.zeros((12, 20))
    np.add.at(R, (ei[0].numpy(), ei[1].numpy()), w.double().numpy())
    np.testing.assert_allclose(R, g.r_hat.to_dense().numpy(), rtol=1e-6)


@pytest.mark.parametrize('weighting', ['similarity', 'binary'])
def test_item_knn_matches_item_item_graph(weighting):
    data = _data()
    out = ItemKNN(k=3, weighting=weighting)(data)
    for m in ('image', 'text'):
        store = out['item', knn_relation(m, 3, weighting), 'item']
        got = _dense_from_edges(store.edge_index, store.edge_weight, 20, 20)
        want = item_item_graph(data['item'][m], 3, weighting=weighting,
                               dtype=torch.float64, layout='csr').to_dense().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)
        assert store.edge_index.size(1) == 20 * 3
    assert ('item', 'knn3_image' + ('' if weighting == 'similarity' else '_binary'),
            'item') in out.edge_types
    assert not [et for et in data.edge_types if et != UI]


def test_transforms_skip_what_is_present():
    data = ItemKNN(k=3)(UserItemNorm()(_data()))
    et = ('item', 'knn3_image', 'item')
    again = UserItemNorm()(ItemKNN(k=3)(data))
    assert again[et].edge_weight is data[et].edge_weight  # not recomputed
    assert again[UI].edge_weight is data[UI].edge_weight
    # another k or rule is another graph
    assert ('item', 'knn4_image', 'item') in ItemKNN(k=4)(data).edge_types


def test_processed_cache_is_keyed_by_content(tmp_path):
    data = _data()
    t = ItemKNN(k=3)
    a = apply_transforms(data, [t], tmp_path)
    files = sorted(tmp_path.glob('ItemKNN-*.pt'))
    assert len(files) == 1
    stamp = files[0].stat().st_mtime_ns
    b = apply_transforms(_data(), [t], tmp_path)  # equal content: read back
    assert files[0].stat().st_mtime_ns == stamp
    et = ('item', 'knn3_image', 'item')
    assert torch.equal(a[et].edge_weight, b[et].edge_weight)
    # One changed feature value: a new key and a new graph.
    changed = _data()
    changed['item'].image[5, 2] += 1.0
    c = apply_transforms(changed, [t], tmp_path)
    assert len(list(tmp_path.glob('ItemKNN-*.pt'))) == 2
    fresh = ItemKNN(k=3)(changed)
    assert torch.equal(c[et].edge_weight, fresh[et].edge_weight)
    assert torch.equal(c[et].edge_index, fresh[et].edge_index)
    # So do another k, another rule and the same values in another dtype.
    apply_transforms(data, [ItemKNN(k=4)], tmp_path)
    apply_transforms(data, [ItemKNN(k=3, weighting='binary')], tmp_path)
    double = _data()
    double['item'].image = double['item'].image.double()
    apply_transforms(double, [t], tmp_path)
    assert len(list(tmp_path.glob('ItemKNN-*.pt'))) == 5
    assert not list(tmp_path.glob('*.tmp')) and not list(tmp_path.glob('.*'))


@pytest.mark.filterwarnings("ignore::mambarec_pyg.data.errors.DataWarning")
def test_a_changed_feature_file_never_reuses_a_stale_graph(tmp_path):
    write_mmrec(_data_with_splits(), tmp_path, 'toy')
    first = apply_transforms(load_mmrec(tmp_path, 'toy'), [ItemKNN(k=3)])
    processed = tmp_path / 'toy' / 'processed'
    assert len(list(processed.glob('ItemKNN-*.pt'))) == 1
    x = np.load(tmp_path / 'toy' / 'image_feat.npy')
    x[0] = -x[0]
    np.save(tmp_path / 'toy' / 'image_feat.npy', x)
    second = apply_transforms(load_mmrec(tmp_path, 'toy'), [ItemKNN(k=3)])
    et = ('item', 'knn3_image', 'item')
    assert not torch.equal(first[et].edge_weight, second[et].edge_weight) or \
        not torch.equal(first[et].edge_index, second[et].edge_index)
    again = ItemKNN(k=3)(load_mmrec(tmp_path, 'toy'))
    assert torch.equal(second[et].edge_weight, again[et].edge_weight)


def test_an_unwritable_cache_warns_and_computes(tmp_path):
    blocker = tmp_path / 'file'
    blocker.write_text('not a directory')
    with pytest.warns(RuntimeWarning, match='could not cache'):
        out = apply_transforms(_data(), [ItemKNN(k=3)], blocker / 'processed')
    assert ('item', 'knn3_text', 'item') in out.edge_types


def _data_with_splits() -> HeteroData:
    data = _data()
    ei = data[UI].edge_index
    data[UI].valid_edge_label_index = ei[:, :5]
    data[UI].test_edge_label_index = ei[:, 5:10]
    data[UI].edge_index = ei[:, 10:]
    return data
