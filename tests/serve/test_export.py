"""Exports: what they hold (against plain computations), atomic publishing and
replacement, refusals, damaged files, external id maps, and ``mambarec export``."""
from __future__ import annotations

import hashlib
import json
import os
import threading

import numpy as np
import pytest
import torch

from support import MF, MFConfig

from mambarec_pyg.cli import main
from mambarec_pyg.config import Config, DataConfig, TrainConfig
from mambarec_pyg.data.mmrec import load_mmrec, write_mmrec
from mambarec_pyg.models.bpr import BPRConfig
from mambarec_pyg.serve import export as export_module
from mambarec_pyg.serve.export import (ExportError, data_fingerprint, export_model,
                                       list_versions, load_export, resolve_export,
                                       write_export)
from mambarec_pyg.train.experiment import build_model

UI = ('user', 'interacts', 'item')


@pytest.fixture(scope='module')
def model(tiny_data):
    torch.manual_seed(0)
    return build_model(tiny_data, BPRConfig(embedding_size=8))


def arrays_of(export):
    return (export.user_embeddings, export.item_embeddings, export.seen_rowptr,
            export.seen_items, export.item_popularity)


def test_export_holds_the_models_arrays(model, tiny_data, tmp_path):
    out = export_model(model, tiny_data, tmp_path / 'exp', config={'note': 'x'})
    e = load_export(tmp_path / 'exp')
    assert e.path == out and out.parent.name == 'versions'
    user, item = model.eval_embeddings()
    np.testing.assert_array_equal(e.user_embeddings, user.detach().numpy())
    np.testing.assert_array_equal(e.item_embeddings, item.detach().numpy())
    assert e.user_embeddings.dtype == np.float32 and e.dim == 8
    # training items and popularity, from the edge list by plain Python
    edges = tiny_data[UI].edge_index.t().tolist()
    U, N = tiny_data['user'].num_nodes, tiny_data['item'].num_nodes
    for u in range(U):
        assert e.seen(u).tolist() == sorted({i for uu, i in edges if uu == u})
    assert e.item_popularity.tolist() == [len({u for u, i in edges if i == item_})
                                          for item_ in range(N)]
    for a in arrays_of(e):
        assert not a.flags.writeable
    m = e.manifest
    assert m['format'] == 'mambarec_pyg.export/1' and m['id'] == out.name
    assert m['model'] == {'name': 'bpr', 'class': 'mambarec_pyg.models.bpr.BPR'}
    assert m['embedding_dim'] == 8 and m['score_function'] == 'dot'
    assert m['config'] == {'note': 'x'} and m['ids'] == {'user': 'internal',
                                                         'item': 'internal'}
    assert m['data']['num_users'] == U and m['data']['num_items'] == N
    assert m['data']['num_train_interactions'] == len(set(map(tuple, edges)))
    assert m['created_at'].endswith('Z') and e.user_ids is None
    assert set(m['files']) == {'user_embeddings.npy', 'item_embeddings.npy',
                               'seen_rowptr.npy', 'seen_items.npy',
                               'item_popularity.npy'}


def test_data_fingerprint_is_a_hash_of_the_training_pairs(tiny_data):
    edges = sorted(set(map(tuple, tiny_data[UI].edge_index.t().tolist())))
    U, N = tiny_data['user'].num_nodes, tiny_data['item'].num_nodes
    rowptr = [0]
    for u in range(U):
        rowptr.append(rowptr[-1] + sum(1 for uu, _ in edges if uu == u))
    h = hashlib.sha256(np.array([U, N], '<i8').tobytes() +
                       np.array(rowptr, '<i8').tobytes() +
                       np.array([i for _, i in edges], '<i8').tobytes())
    assert data_fingerprint(tiny_data) == 'sha256:' + h.hexdigest()
    other = tiny_data.clone()
    other[UI].edge_index = tiny_data[UI].edge_index[:, 1:]
    assert data_fingerprint(other) != data_fingerprint(tiny_data)


def test_refuses_an_export_unless_told_and_replaces_atomically(model, tiny_data,
                                                                tmp_path):
    out = tmp_path / 'exp'
    first = export_model(model, tiny_data, out)
    with pytest.raises(FileExistsError, match=r"holds an export \(version .* of model "
                                              r"'bpr'.*overwrite"):
        export_model(model, tiny_data, out)
    assert resolve_export(out) == first
    second = export_model(model, tiny_data, out, overwrite=True)
    third = export_model(model, tiny_data, out, overwrite=True)
    assert os.readlink(out / 'current') == os.path.join('versions', third.name)
    # the newest two versions are kept (the previous one for readers still on it)
    assert list_versions(out) == [second, third] and not first.exists()
    export_model(model, tiny_data, out, overwrite=True, keep=1)
    assert len(list_versions(out)) == 1
    assert sorted(p.name for p in out.iterdir()) == ['current', 'versions']


def test_a_reader_never_sees_half_an_export(model, tiny_data, tmp_path):
    out = tmp_path / 'exp'
    a = arrays_of_model(model)
    b = tuple(x + 1 if x.dtype == np.float32 else x for x in a)
    write(out, a)
    loads, problems, stop = [], [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                e = load_export(out)
            except Exception as err:  # noqa: BLE001 - counted as a failure
                problems.append(repr(err))
                continue
            got = arrays_of(e)
            whole = [all(np.array_equal(x, y) for x, y in zip(got, want))
                     for want in (a, b)]
            if not any(whole):
                problems.append(f'mixed content in {e.id}')
            loads.append(e.id)

    t = threading.Thread(target=reader)
    t.start()
    try:
        for n in range(12):
            # keep many versions: pruning is tested above, here only the swap
            write(out, b if n % 2 == 0 else a, overwrite=True, keep=100)
    finally:
        stop.set()
        t.join()
    assert not problems and len(loads) > 0


def arrays_of_model(model):
    user, item = model.eval_embeddings()
    return (user.detach().numpy().copy(), item.detach().numpy().copy(),
            model.train_rowptr.numpy(),
            model.train_items.numpy(),
            np.bincount(model.train_items.numpy(), minlength=model.num_items))


def write(out, arrays, **kw):
    return write_export(out, *arrays, model={'name': 'test'}, **kw)


def test_a_failed_export_leaves_nothing(model, tiny_data, tmp_path, monkeypatch):
    out = tmp_path / 'exp'
    first = export_model(model, tiny_data, out)
    calls = []

    def failing_save(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(28, 'No space left on device')
        return np.save(*args, **kwargs)

    monkeypatch.setattr(export_module.np, 'save', failing_save)
    with pytest.raises(OSError, match='No space'):
        export_model(model, tiny_data, out, overwrite=True)
    monkeypatch.undo()
    assert list_versions(out) == [first] and resolve_export(out) == first
    assert [p.name for p in (out / 'versions').iterdir()] == [first.name]
    # a brand-new directory: nothing at all is published
    with pytest.raises(ExportError, match='row 3 holds NaN'):
        bad = arrays_of_model(model)
        bad[0][3, 1] = np.nan
        write(tmp_path / 'nan', bad)
    assert not (tmp_path / 'nan' / 'current').exists()


def test_refuses_directories_that_are_not_exports(model, tiny_data, tmp_path):
    (tmp_path / 'busy').mkdir()
    (tmp_path / 'busy' / 'notes.txt').write_text('mine')
    with pytest.raises(ExportError, match="not empty and holds no export.*notes.txt"):
        export_model(model, tiny_data, tmp_path / 'busy', overwrite=True)
    (tmp_path / 'file').write_text('x')
    with pytest.raises(ExportError, match='is a file'):
        export_model(model, tiny_data, tmp_path / 'file')
    version = export_model(model, tiny_data, tmp_path / 'exp')
    with pytest.raises(ExportError, match='one version of an export'):
        export_model(model, tiny_data, version, overwrite=True)
    a = arrays_of_model(model)
    with pytest.raises(ExportError, match='seen_rowptr.npy: expected non-decreasing'):
        write(tmp_path / 'x', (a[0], a[1], a[2][:-1], a[3], a[4]))
    with pytest.raises(ExportError, match='user_embeddings.npy: expected the width'):
        write(tmp_path / 'x', (a[0][:, :3], a[1], a[2], a[3], a[4]))
    with pytest.raises(ExportError, match=r'seen_items.npy: expected item ids in'):
        write(tmp_path / 'x', (a[0], a[1], a[2], a[3] + 100, a[4]))
    with pytest.raises(ExportError, match='keep'):
        write(tmp_path / 'x', a, keep=0)


def test_damaged_exports_are_named(model, tiny_data, tmp_path):
    out = tmp_path / 'exp'
    version = export_model(model, tiny_data, out)
    path = version / 'item_embeddings.npy'
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(ExportError, match='item_embeddings.npy: sha256 differs'):
        load_export(out)
    assert load_export(out, verify=False).item_embeddings.shape == (60, 8)
    path.unlink()
    with pytest.raises(ExportError, match='item_embeddings.npy: missing'):
        load_export(out)
    manifest = json.loads((version / 'manifest.json').read_text())
    for change, message in ((dict(format='other/9'), "expected format"),
                            (dict(score_function='cosine'), "'cosine' is not "
                                                            "supported")):
        (version / 'manifest.json').write_text(json.dumps(dict(manifest, **change)))
        with pytest.raises(ExportError, match=message):
            load_export(out)
    (version / 'manifest.json').write_text('{"format": ')
    with pytest.raises(ExportError, match='manifest.json: not a readable manifest'):
        load_export(out)
    with pytest.raises(ExportError, match='not found'):
        load_export(tmp_path / 'nothing')
    (tmp_path / 'empty').mkdir()
    with pytest.raises(ExportError, match="no export found"):
        load_export(tmp_path / 'empty')


def test_models_that_rank_otherwise_are_refused(tiny_data, tmp_path):
    class Reranked(MF):
        def recommend(self, users, k=20, **kw):  # pragma: no cover - never called
            raise AssertionError

    with pytest.raises(ExportError, match=r"overrides Recommender.recommend"):
        export_model(Reranked(tiny_data, MFConfig()), tiny_data, tmp_path / 'x')
    assert not (tmp_path / 'x').exists()


@pytest.fixture(scope='module')
def mapped(tiny_data, tmp_path_factory):
    """``tiny`` as an MMRec directory with MMRec's id-mapping files."""
    root = tmp_path_factory.mktemp('mapped')
    U, N = tiny_data['user'].num_nodes, tiny_data['item'].num_nodes
    users = ''.join(f'A{u:04d}X\t{u}\n' for u in reversed(range(U)))
    items = ''.join(f'B0{i:05d}\t{i}\n' for i in range(N))
    write_mmrec(tiny_data, root, 'mapped', extra_files={
        'u_id_mapping.csv': 'user_id\tuserID\n' + users,
        'i_id_mapping.csv': 'asin\titemID\n' + items})
    return root


def test_external_id_maps_are_exported(mapped, tmp_path):
    data = load_mmrec(mapped, 'mapped')
    model = build_model(data, BPRConfig(embedding_size=4))
    export_model(model, data, tmp_path / 'exp')
    e = load_export(tmp_path / 'exp')
    assert e.user_ids[:2] == ('A0000X', 'A0001X') and len(e.user_ids) == 100
    assert e.item_ids[7] == 'B000007' and len(e.item_ids) == 60
    assert e.manifest['ids'] == {'user': 'external', 'item': 'external'}
    export_model(model, data, tmp_path / 'plain', id_maps=None)
    assert load_export(tmp_path / 'plain').user_ids is None


@pytest.mark.parametrize('text, message', [
    ('user_id\tuserID\nA\t0\nB\t0\n', 'line 3: userID 0 is mapped twice'),
    ('user_id\tuserID\nA\t0\nA\t1\n', "line 3: external id 'A' is also on line 2"),
    ('user_id\tuserID\nA\t0\n', r'99 of 100 userIDs have no external id \(first: 1\)'),
    ('user_id\tuser\nA\t0\n', "expected two tab-separated columns"),
    ('user_id\tuserID\nA\t-1\n', "line 2, column 'userID': expected an id in"),
])
def test_bad_id_maps_are_named(mapped, tmp_path, text, message):
    from mambarec_pyg.serve.export import read_id_maps
    (tmp_path / 'u_id_mapping.csv').write_text(text)
    with pytest.raises(ExportError, match=message):
        read_id_maps(tmp_path, 100, 60)
    assert read_id_maps(tmp_path / 'nothing-here', 100, 60) == (None, None)


def test_cli_export(checkpoint, tmp_path, capsys):
    ckpt = checkpoint('bpr')
    out = tmp_path / 'exp'
    assert main(['export', str(ckpt), '--output', str(out)]) == 0
    assert f'serve with: mambarec serve {out}' in capsys.readouterr().out
    e = load_export(out)
    m = e.manifest
    assert m['checkpoint']['path'] == str(ckpt.resolve())
    assert m['checkpoint']['sha256'] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert m['config']['model']['name'] == 'bpr' and 'best_epoch' in m['checkpoint']
    assert m['data']['spec']['synthetic'] == 'tiny'
    assert main(['export', str(ckpt), '--output', str(out)]) == 1
    assert 'holds an export' in capsys.readouterr().err
    assert main(['export', str(ckpt), '--output', str(out), '--overwrite']) == 0
    assert resolve_export(out) != e.path
    assert main(['export', str(tmp_path / 'none.pt'), '--output',
                 str(tmp_path / 'new')]) == 1
    assert 'checkpoint not found' in capsys.readouterr().err
    assert main(['export', str(ckpt), '--output', str(out), '--overwrite',
                 '--keep', '0']) == 2
    assert '--keep: expected a positive integer' in capsys.readouterr().err
    (tmp_path / 'busy').mkdir()
    (tmp_path / 'busy' / 'mine.txt').write_text('x')
    assert main(['export', str(ckpt), '--output', str(tmp_path / 'busy')]) == 1
    assert 'holds no export' in capsys.readouterr().err


def test_cli_export_with_id_maps(mapped, tmp_path, capsys):
    from mambarec_pyg.train.experiment import run
    config = Config(data=DataConfig(root=str(mapped), dataset='mapped'),
                    model=BPRConfig(embedding_size=4),
                    train=TrainConfig(device='cpu', batch_size=256, max_epochs=1,
                                      checkpoint_interval_s=0))
    run(config, tmp_path / 'run', quiet=True)
    assert main(['export', str(tmp_path / 'run'), '--output',
                 str(tmp_path / 'exp')]) == 0
    assert load_export(tmp_path / 'exp').item_ids[0] == 'B000000'
    assert main(['export', str(tmp_path / 'run'), '--output', str(tmp_path / 'no'),
                 '--no-id-maps']) == 0
    assert load_export(tmp_path / 'no').item_ids is None
