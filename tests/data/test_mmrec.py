"""Reading and writing the MMRec format: contents, round trip, atomic writes."""
from __future__ import annotations

import csv
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import mambarec_pyg
import mambarec_pyg.data as mdata
from mambarec_pyg.data import (UI, DataError, DataWarning, load_mmrec, summarize,
                               write_mmrec)
from mambarec_pyg.data.summary import DatasetSummary


@pytest.fixture(scope='module')
def fixture_root(released_tiny_dir) -> Path:
    return released_tiny_dir


@pytest.fixture()
def tiny_copy(fixture_root, tmp_path) -> Path:
    """A writable copy of the fixture dataset: ``tmp_path/tiny/``."""
    shutil.copytree(fixture_root / 'tiny', tmp_path / 'tiny')
    return tmp_path


def _plain_read(path: Path):
    """The interaction file through the csv module, split by x_label."""
    with open(path, newline='') as f:
        rows = list(csv.DictReader(f, delimiter='\t'))
    out = {0: [], 1: [], 2: []}
    for r in rows:
        out[int(r['x_label'])].append((int(r['userID']), int(r['itemID'])))
    return rows, {k: torch.tensor(v, dtype=torch.long).t().reshape(2, -1)
                  for k, v in out.items()}


def test_load_released_tiny(fixture_root):
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # a clean dataset warns about nothing
        data = load_mmrec(fixture_root, 'tiny')
    rows, splits = _plain_read(fixture_root / 'tiny' / 'tiny.inter')
    assert len(rows) == 320
    assert data.name == 'tiny'
    assert data['user'].num_nodes == 40
    assert data['item'].num_nodes == 30
    assert tuple(data.modalities) == ('image', 'text')
    store = data[UI]
    assert store.edge_index.dtype == torch.long
    assert store.edge_index.shape == (2, 238)
    assert store.valid_edge_label_index.shape == (2, 41)
    assert store.test_edge_label_index.shape == (2, 41)
    assert torch.equal(store.edge_index, splits[0])
    assert torch.equal(store.valid_edge_label_index, splits[1])
    assert torch.equal(store.test_edge_label_index, splits[2])
    assert data.num_dropped_eval_users == {'valid': 0, 'test': 0}
    for m, dim in (('image', 64), ('text', 24)):
        x = data['item'][m]
        assert x.dtype == torch.float32 and x.shape == (30, dim)
        raw = np.load(fixture_root / 'tiny' / f'{m}_feat.npy')
        assert torch.equal(x, torch.from_numpy(raw.astype(np.float32)))
    assert (data['item'].image >= 0).all()


def test_modalities_select_and_order(fixture_root):
    data = load_mmrec(fixture_root, 'tiny', modalities=['text', 'image'])
    assert tuple(data.modalities) == ('text', 'image')
    data = load_mmrec(fixture_root, 'tiny', modalities=['text'])
    assert tuple(data.modalities) == ('text', )
    assert 'image' not in data['item']


def test_any_number_of_modalities(tiny_copy):
    np.save(tiny_copy / 'tiny' / 'audio_feat.npy', np.ones((30, 5), dtype=np.float64))
    data = load_mmrec(tiny_copy, 'tiny')
    assert tuple(data.modalities) == ('audio', 'image', 'text')
    assert data['item'].audio.dtype == torch.float32  # float64 file converted
    assert torch.equal(data['item'].audio, torch.ones(30, 5))


def test_optional_rating_and_timestamp_columns(fixture_root, tiny_copy):
    path = tiny_copy / 'tiny' / 'tiny.inter'
    rows, _ = _plain_read(path)
    with open(path, 'w') as f:
        f.write('x_label\titemID\tuserID\n')
        for r in rows:
            f.write(f"{r['x_label']}\t{r['itemID']}\t{r['userID']}\n")
    data = load_mmrec(tiny_copy, 'tiny')  # columns reordered, two absent
    ref = load_mmrec(fixture_root, 'tiny')
    for key in ('edge_index', 'valid_edge_label_index', 'test_edge_label_index'):
        assert torch.equal(data[UI][key], ref[UI][key])


def test_round_trip(fixture_root, tmp_path):
    data = load_mmrec(fixture_root, 'tiny')
    out = write_mmrec(data, tmp_path, 'copy')
    assert out == tmp_path / 'copy'
    assert sorted(p.name for p in out.iterdir()) == [
        'copy.inter', 'image_feat.npy', 'text_feat.npy']
    header = (out / 'copy.inter').read_text().splitlines()[0]
    assert header == 'userID\titemID\trating\ttimestamp\tx_label'
    back = load_mmrec(tmp_path, 'copy')
    assert back['user'].num_nodes == 40 and back['item'].num_nodes == 30
    assert tuple(back.modalities) == tuple(data.modalities)
    for key in ('edge_index', 'valid_edge_label_index', 'test_edge_label_index'):
        assert torch.equal(back[UI][key], data[UI][key])
    for m in data.modalities:
        assert torch.equal(back['item'][m], data['item'][m])
    # Only the temporary-free result is left in root.
    assert [p.name for p in tmp_path.iterdir()] == ['copy']


def test_write_refuses_to_overwrite_unless_asked(fixture_root, tmp_path):
    data = load_mmrec(fixture_root, 'tiny')
    write_mmrec(data, tmp_path, 'd')
    with pytest.raises(FileExistsError, match='overwrite=True'):
        write_mmrec(data, tmp_path, 'd')
    data['item'].text = data['item'].text * 2
    write_mmrec(data, tmp_path, 'd', overwrite=True)
    assert torch.equal(load_mmrec(tmp_path, 'd')['item'].text, data['item'].text)
    assert [p.name for p in tmp_path.iterdir()] == ['d']


def _fail_on_second_save(monkeypatch):
    calls = []
    real_save = np.save

    def save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError('disk full (simulated)')
        return real_save(*args, **kwargs)

    monkeypatch.setattr(np, 'save', save)
    return calls


def test_failed_write_leaves_nothing(fixture_root, tmp_path, monkeypatch):
    data = load_mmrec(fixture_root, 'tiny')
    calls = _fail_on_second_save(monkeypatch)
    with pytest.raises(OSError, match='simulated'):
        write_mmrec(data, tmp_path, 'broken')
    assert len(calls) == 2
    assert list(tmp_path.iterdir()) == []


def test_failed_overwrite_keeps_previous(fixture_root, tmp_path, monkeypatch):
    data = load_mmrec(fixture_root, 'tiny')
    write_mmrec(data, tmp_path, 'd')
    before = {p.name: p.read_bytes() for p in (tmp_path / 'd').iterdir()}
    _fail_on_second_save(monkeypatch)
    data['item'].image = data['item'].image + 1
    with pytest.raises(OSError, match='simulated'):
        write_mmrec(data, tmp_path, 'd', overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ['d']
    assert {p.name: p.read_bytes() for p in (tmp_path / 'd').iterdir()} == before


def test_write_rejects_unrepresentable_data(fixture_root, tmp_path):
    data = load_mmrec(fixture_root, 'tiny')
    data['user'].num_nodes = 41  # user 40 has no interaction: U would come back as 40
    with pytest.raises(DataError, match=r"user 40 has no interaction"):
        write_mmrec(data, tmp_path, 'x')
    data = load_mmrec(fixture_root, 'tiny')
    data['item'].text = data['item'].text[:-1]
    with pytest.raises(DataError, match=r"data\['item'\]\.text: expected shape \[30, D\]"):
        write_mmrec(data, tmp_path, 'x')
    assert list(tmp_path.iterdir()) == []


def test_duplicates_dropped_with_warning(fixture_root, tiny_copy):
    path = tiny_copy / 'tiny' / 'tiny.inter'
    lines = path.read_text().splitlines(keepends=True)
    u, i = lines[1].split('\t')[:2]
    # The same pair again, once as a test interaction, and line 2 again verbatim.
    path.write_text(''.join(lines) + f'{u}\t{i}\t5.0\t0\t2\n' + lines[2])
    with pytest.warns(DataWarning, match=r'tiny\.inter: dropped 2 duplicate'):
        data = load_mmrec(tiny_copy, 'tiny')
    # The first occurrences are kept, in file order: exactly the clean dataset.
    clean = load_mmrec(fixture_root, 'tiny')
    for key in ('edge_index', 'valid_edge_label_index', 'test_edge_label_index'):
        assert torch.equal(data[UI][key], clean[UI][key])


def test_users_without_training_dropped_from_evaluation(tiny_copy):
    path = tiny_copy / 'tiny' / 'tiny.inter'
    text = path.read_text()
    # User 40 only in valid (2 interactions) and test (1): no training interaction.
    path.write_text(text + '40\t1\t5.0\t0\t1\n40\t2\t5.0\t0\t1\n40\t3\t5.0\t0\t2\n')
    with pytest.warns(DataWarning, match=r'1 from valid \(2 interactions\), 1 from '
                      r'test \(1 interactions\)'):
        data = load_mmrec(tiny_copy, 'tiny')
    assert data['user'].num_nodes == 41  # max id + 1 over the whole file
    assert data.num_dropped_eval_users == {'valid': 1, 'test': 1}
    assert data[UI].valid_edge_label_index.shape == (2, 41)
    assert not (data[UI].valid_edge_label_index[0] == 40).any()
    assert summarize(data).dropped_eval_users == {'valid': 1, 'test': 1}


def test_summary_matches_plain_counts(fixture_root, capsys):
    data = load_mmrec(fixture_root, 'tiny', verbose=True)
    printed = capsys.readouterr().out
    s = summarize(data)
    assert isinstance(s, DatasetSummary)
    assert (s.num_users, s.num_items, s.num_interactions) == (40, 30, 320)
    assert s.split_interactions == {'train': 238, 'valid': 41, 'test': 41}
    assert s.modality_dims == (('image', 64), ('text', 24))
    assert s.density_percent == f'{100 * 320 / (40 * 30):.3f}%' == '26.667%'
    assert str(s) == printed.rstrip('\n')
    for token in ('#Users', '#Items', '#Interactions', 'Density', '26.667%',
                  'train', '238', 'image', '64', 'text', '24'):
        assert token in printed
    assert s.as_dict()['splits'] == {'train': 238, 'valid': 41, 'test': 41}


def test_summary_density_like_table1():
    s = DatasetSummary('baby', 19_445, 7_050, 160_792)
    assert s.density_percent == '0.117%'
    assert '19,445' in str(s) and '160,792' in str(s)
    assert DatasetSummary('sports', 35_598, 18_357, 296_337).density_percent == '0.045%'
    assert DatasetSummary('clothing', 39_387, 23_033,
                          278_677).density_percent == '0.031%'


def test_public_exports():
    for name in ('UI', 'DataError', 'load_mmrec', 'write_mmrec', 'make_synthetic',
                 'synthetic_dataset', 'PRESETS', 'summarize', 'DatasetSummary',
                 'normalized_adjacency', 'item_item_graph', 'sample_negatives'):
        assert name in mdata.__all__ and name in dir(mdata)
    assert mdata.UI == ('user', 'interacts', 'item')
    assert issubclass(DataError, ValueError)
    assert mdata.make_synthetic is mambarec_pyg.make_synthetic
    assert mdata.load_mmrec is mambarec_pyg.load_mmrec
    with pytest.raises(AttributeError, match='no_such_name'):
        mdata.no_such_name
