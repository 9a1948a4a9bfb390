"""Synthetic data: exact sizes, constraints, MMRec's split rule, planted signal,
determinism and the cached MMRec files."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from mambarec_pyg.data import (PRESETS, UI, DataError, load_mmrec, make_synthetic,
                               synthetic_dataset)
from mambarec_pyg.data.synthetic import (MIN_DEGREE, SyntheticPreset, _degrees,
                                         default_cache_root, write_synthetic)


def _all_edges(data):
    store = data[UI]
    edges = [store.edge_index, store.valid_edge_label_index,
             store.test_edge_label_index]
    labels = [torch.full((e.size(1), ), k) for k, e in enumerate(edges)]
    return torch.cat(edges, 1).numpy(), torch.cat(labels).numpy()


def _assert_structure(data, preset: SyntheticPreset):
    """Exact counts, min-5, no repeated pair and the split rule, by plain loops."""
    edges, labels = _all_edges(data)
    U, N = data['user'].num_nodes, data['item'].num_nodes
    assert (U, N, edges.shape[1]) == (preset.num_users, preset.num_items,
                                      preset.num_interactions)
    assert data['item'].image.shape == (N, preset.image_dim)
    assert data['item'].text.shape == (N, preset.text_dim)
    assert data['item'].image.dtype == data['item'].text.dtype == torch.float32
    pairs = set()
    per_user = {}
    item_deg = np.zeros(N, dtype=int)
    for (u, i), x in zip(edges.T.tolist(), labels.tolist()):
        assert (u, i) not in pairs, f'repeated pair {(u, i)}'
        pairs.add((u, i))
        per_user.setdefault(u, [0, 0, 0])[x] += 1
        item_deg[i] += 1
    assert len(per_user) == U
    assert item_deg.min() >= MIN_DEGREE
    for u, (train, valid, test) in per_user.items():
        n = train + valid + test
        assert n >= MIN_DEGREE
        if n < 10:
            assert (valid, test) == (1, 1), (u, n, valid, test)
        else:
            m = int(0.2 * n)
            assert (valid, test) == (m // 2, m - m // 2), (u, n, valid, test)
    assert data.num_dropped_eval_users == {'valid': 0, 'test': 0}


def test_presets_declare_table1_counts():
    assert set(PRESETS) >= {'tiny', 'baby', 'sports', 'clothing'}
    table1 = {'baby': (19_445, 7_050, 160_792), 'sports': (35_598, 18_357, 296_337),
              'clothing': (39_387, 23_033, 278_677)}
    for name, counts in table1.items():
        p = PRESETS[name]
        assert (p.num_users, p.num_items, p.num_interactions) == counts
        assert (p.image_dim, p.text_dim) == (4096, 384)


@pytest.mark.parametrize('seed', [0, 1, 2])
def test_tiny_structure(seed):
    data = make_synthetic('tiny', seed=seed)
    _assert_structure(data, PRESETS['tiny'])
    assert data.name == f'synthetic-tiny-{seed}'
    assert tuple(data.modalities) == ('image', 'text')
    assert data['item'].topic.shape == (PRESETS['tiny'].num_items, )


def test_custom_preset_structure():
    preset = SyntheticPreset(300, 120, 2600, image_dim=40, text_dim=12, num_topics=5)
    _assert_structure(make_synthetic(preset, seed=3), preset)


def test_feature_shapes_like_the_paper():
    data = make_synthetic('tiny')
    assert (data['item'].image >= 0).all()  # like ReLU'd VGG fc7 features
    assert (data['item'].image == 0).any()
    norms = data['item'].text.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))


def _neighbour_topic_agreement(x: np.ndarray, topic: np.ndarray, k: int = 5) -> float:
    x = x.astype(np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    nn = np.argsort(-sim, axis=1, kind='stable')[:, :k]
    return float((topic[nn] == topic[:, None]).mean())


def test_planted_signal_in_each_modality():
    data = make_synthetic('tiny')
    topic = data['item'].topic.numpy()
    N = topic.size
    sizes = np.bincount(topic)
    chance = float(((sizes[topic] - 1) / (N - 1)).mean())
    for m in data.modalities:
        agreement = _neighbour_topic_agreement(data['item'][m].numpy(), topic)
        assert agreement > 3 * chance, (m, agreement, chance)
    # Users concentrate on few topics: their most frequent topic's share is far above
    # the share a user spreading evenly over all topics would have.
    edges, _ = _all_edges(data)
    K = topic.max() + 1
    counts = np.zeros((data['user'].num_nodes, K))
    np.add.at(counts, (edges[0], topic[edges[1]]), 1)
    assert (counts.max(1) / counts.sum(1)).mean() > 2.5 / K


def test_popularity_and_activity_are_long_tailed():
    preset = SyntheticPreset(2000, 800, 16_000, image_dim=16, text_dim=8, num_topics=8)
    edges, _ = _all_edges(make_synthetic(preset))
    for row, top_share, max_over_median in ((1, 0.3, 10), (0, 0.15, 5)):
        deg = np.sort(np.bincount(edges[row]))[::-1]
        # the top 10% of items (users) hold far more than 10% of the interactions
        assert deg[:len(deg) // 10].sum() / deg.sum() > top_share
        assert deg[0] > max_over_median * np.median(deg)


def test_degrees_exact_total_min_and_cap():
    rng = np.random.Generator(np.random.PCG64(0))
    w = 1.0 + rng.pareto(1.0, 1000)
    deg = _degrees(rng, w, 20_000, cap=40)
    assert deg.sum() == 20_000
    assert deg.min() >= MIN_DEGREE and deg.max() <= 40
    assert (deg == 40).any()  # the cap was reached and the excess redistributed


def test_same_seed_same_arrays_other_seed_differs():
    a, b, c = make_synthetic('tiny', 7), make_synthetic('tiny', 7), make_synthetic(
        'tiny', 8)
    for key in ('edge_index', 'valid_edge_label_index', 'test_edge_label_index'):
        assert torch.equal(a[UI][key], b[UI][key])
    for key in ('image', 'text', 'topic'):
        assert torch.equal(a['item'][key], b['item'][key])
    assert not torch.equal(a['item'].image, c['item'].image)
    assert not torch.equal(a[UI].edge_index, c[UI].edge_index)


def test_same_seed_same_bytes(tmp_path):
    d1 = write_synthetic('tiny', 5, tmp_path / 'a')
    d2 = write_synthetic('tiny', 5, tmp_path / 'b')
    files = sorted(p.name for p in d1.iterdir())
    assert files == sorted(p.name for p in d2.iterdir())
    assert 'synthetic-tiny-5.inter' in files and 'image_feat.npy' in files
    for name in files:
        assert (d1 / name).read_bytes() == (d2 / name).read_bytes(), name


def test_synthetic_dataset_goes_through_loader(tmp_path):
    data = synthetic_dataset('tiny', seed=0, root=tmp_path)
    ref = make_synthetic('tiny', seed=0)
    directory = tmp_path / 'synthetic-tiny-0'
    assert (directory / 'synthetic-tiny-0.inter').is_file()
    assert json.loads((directory / 'synthetic.json').read_text())['preset'] == 'tiny'
    reloaded = load_mmrec(tmp_path, 'synthetic-tiny-0')
    for d in (data, reloaded):
        for key in ('edge_index', 'valid_edge_label_index', 'test_edge_label_index'):
            assert torch.equal(d[UI][key], ref[UI][key])
        for m in ('image', 'text'):
            assert torch.equal(d['item'][m], ref['item'][m])
    assert torch.equal(data['item'].topic, ref['item'].topic)
    assert data.name == ref.name == 'synthetic-tiny-0'


def test_synthetic_dataset_reuses_complete_files(tmp_path, monkeypatch):
    synthetic_dataset('tiny', root=tmp_path)
    inter = tmp_path / 'synthetic-tiny-0' / 'synthetic-tiny-0.inter'
    stamp = inter.stat().st_mtime_ns
    import mambarec_pyg.data.synthetic as synthetic
    calls = []
    real = synthetic.write_synthetic
    monkeypatch.setattr(synthetic, 'write_synthetic',
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    synthetic_dataset('tiny', root=tmp_path)
    assert calls == [] and inter.stat().st_mtime_ns == stamp
    # A damaged directory (a truncated feature file) is detected and rewritten.
    feat = tmp_path / 'synthetic-tiny-0' / 'image_feat.npy'
    feat.write_bytes(feat.read_bytes()[:200])
    data = synthetic_dataset('tiny', root=tmp_path)
    assert calls == [1]
    assert data['item'].image.shape == (60, 64)
    # So is a manifest from another generator version or preset.
    manifest = tmp_path / 'synthetic-tiny-0' / 'synthetic.json'
    manifest.write_text(manifest.read_text().replace('"version": 1', '"version": 0'))
    synthetic_dataset('tiny', root=tmp_path)
    assert calls == [1, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ['synthetic-tiny-0']


def test_default_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv('MAMBAREC_CACHE', str(tmp_path))
    assert default_cache_root() == tmp_path / 'synthetic'
    data = synthetic_dataset('tiny', seed=1)
    assert (tmp_path / 'synthetic' / 'synthetic-tiny-1').is_dir()
    assert data['user'].num_nodes == PRESETS['tiny'].num_users


def test_unknown_preset():
    with pytest.raises(DataError, match=r"preset 'babyy' unknown; did you mean "
                       r"'baby'\?"):
        make_synthetic('babyy')
    with pytest.raises(DataError, match='at least 5'):
        make_synthetic(SyntheticPreset(10, 10, 20))


@pytest.mark.slow
def test_baby_through_loader(tmp_path):
    data = synthetic_dataset('baby', seed=0, root=tmp_path)
    edges, labels = _all_edges(data)
    assert data['user'].num_nodes == 19_445
    assert data['item'].num_nodes == 7_050
    assert edges.shape[1] == 160_792
    assert data['item'].image.shape == (7_050, 4096)
    assert data['item'].text.shape == (7_050, 384)
    assert data['item'].topic.shape == (7_050, )
    assert np.bincount(edges[0]).min() >= MIN_DEGREE
    assert np.bincount(edges[1]).min() >= MIN_DEGREE
    assert np.unique(edges[0].astype(np.int64) * 7_050 + edges[1]).size == 160_792
    # The split rule, vectorised (the tiny tests check it by plain loops).
    n = np.bincount(edges[0], minlength=19_445)
    m = np.where(n < 10, 2, (0.2 * n).astype(int))
    valid = np.bincount(edges[0][labels == 1], minlength=19_445)
    test = np.bincount(edges[0][labels == 2], minlength=19_445)
    np.testing.assert_array_equal(valid, np.where(n < 10, 1, m // 2))
    np.testing.assert_array_equal(test, np.where(n < 10, 1, m - m // 2))


def test_load_dataset_from_config(tmp_path, monkeypatch, released_tiny_dir):
    from mambarec_pyg.config import DataConfig
    from mambarec_pyg.data import load_dataset
    monkeypatch.setenv('MAMBAREC_CACHE', str(tmp_path))
    data = load_dataset(DataConfig(synthetic='tiny', synthetic_seed=2,
                                   modalities=('text', )))
    assert tuple(data.modalities) == ('text', ) and 'image' not in data['item']
    assert data.name == 'synthetic-tiny-2'
    assert torch.equal(data[UI].edge_index, make_synthetic('tiny', 2)[UI].edge_index)
    data = load_dataset(DataConfig(root=str(released_tiny_dir), dataset='tiny',
                                   synthetic='tiny'))
    assert data.name == 'tiny' and data['user'].num_nodes == 40
