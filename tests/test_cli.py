"""The ``mambarec`` command line (in-process through ``main(argv)``)."""
import csv
import io
import json

import pytest
import torch
import yaml

from mambarec_pyg.cli import main
from mambarec_pyg.config import parse_text as _parse
from mambarec_pyg.config import Config

UI = ('user', 'interacts', 'item')
FAST = ['--train.max-epochs', '2', '--train.batch-size', '256', '--device', 'cpu',
        '--quiet']



@pytest.fixture(scope='module')
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp('cli') / 'run'
    assert main(['train', '--synthetic', 'tiny', '--output', str(out),
                 '--model.mmd-weight', '0.2', *FAST]) == 0
    return out


def test_train_writes_the_run_directory(run_dir, capsys):
    for name in ('results.json', 'best.pt', 'last.pt', 'train.log', 'config.yaml'):
        assert (run_dir / name).is_file(), name
    results = json.loads((run_dir / 'results.json').read_text())
    assert results['status'] == 'max_epochs' and results['epochs'] == 2
    assert results['config']['model']['mmd_weight'] == 0.2
    assert results['config']['data']['synthetic'] == 'tiny'
    cfg = Config.from_yaml(run_dir / 'config.yaml')
    assert cfg.model.mmd_weight == 0.2 and cfg.train.max_epochs == 2
    assert 'epoch    1' in (run_dir / 'train.log').read_text()


def test_train_prints_table_and_refuses_to_overwrite(run_dir, capsys):
    code = main(['train', '--synthetic', 'tiny', '--output', str(run_dir), *FAST])
    assert code == 2
    assert 'already holds a run' in capsys.readouterr().err


def test_resume_continues_the_run(tmp_path, capsys):
    out = tmp_path / 'r'
    assert main(['train', '--synthetic', 'tiny', '--output', str(out), *FAST]) == 0
    assert main(['train', '--synthetic', 'tiny', '--output', str(out), '--resume',
                 *FAST[:-1], '--train.max-epochs', '3', '--quiet']) == 0
    printed = capsys.readouterr().out
    assert 'R@20' in printed and 'results:' in printed
    results = json.loads((out / 'results.json').read_text())
    assert results['epochs'] == 3 and len(results['history']) == 3


def test_evaluate_matches_results(run_dir, capsys):
    capsys.readouterr()
    assert main(['evaluate', str(run_dir / 'best.pt'), '--split', 'test', '--format',
                 'json', '--device', 'cpu', '--quiet']) == 0
    got = json.loads(capsys.readouterr().out)['test']
    want = json.loads((run_dir / 'results.json').read_text())['test']
    for k in ('recall@20', 'ndcg@20', 'precision@10', 'map@50'):
        assert got[k] == pytest.approx(want[k], abs=1e-6)
    # a run directory means its best.pt; the table lists every metric
    assert main(['evaluate', str(run_dir), '--split', 'both', '--quiet']) == 0
    table = capsys.readouterr().out
    assert 'recall' in table and 'valid' in table and 'test' in table


def test_recommend_excludes_seen_items(run_dir, tiny_data, tmp_path, capsys):
    capsys.readouterr()
    assert main(['recommend', str(run_dir / 'best.pt'), '--users', '0,1,2', '--k',
                 '5', '--device', 'cpu']) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert len(rows) == 15 and rows[0].keys() == {'user', 'rank', 'item', 'score'}
    train = tiny_data[UI].edge_index
    seen = set(map(tuple, train.t().tolist()))
    assert not any((int(r['user']), int(r['item'])) in seen for r in rows)
    users_file = tmp_path / 'users.txt'
    users_file.write_text('3\n4\n')
    out = tmp_path / 'rec.json'
    assert main(['recommend', str(run_dir), '--users-file', str(users_file), '--k',
                 '3', '--format', 'json', '--out', str(out)]) == 0
    recs = json.loads(out.read_text())
    assert [r['user'] for r in recs] == [3, 4] and all(len(r['items']) == 3
                                                       for r in recs)


def test_recommend_errors(run_dir, tmp_path, capsys):
    assert main(['recommend', str(run_dir), '--users', '0,999']) == 2
    assert 'user id 999' in capsys.readouterr().err
    assert main(['recommend', str(run_dir), '--users', '0,x']) == 2
    assert "got 'x'" in capsys.readouterr().err
    assert main(['recommend', str(run_dir), '--users-file',
                 str(tmp_path / 'nope.txt')]) == 1
    assert 'users file not found' in capsys.readouterr().err
    assert main(['recommend', str(tmp_path / 'missing.pt'), '--users', '0']) == 1
    err = capsys.readouterr().err
    assert 'checkpoint not found' in err and 'Traceback' not in err


def test_stats(capsys):
    assert main(['stats', '--synthetic', 'tiny']) == 0
    out = capsys.readouterr().out
    assert '#Users' in out and '100' in out and 'image' in out
    assert main(['stats', '--synthetic', 'tiny', '--format', 'json']) == 0
    d = json.loads(capsys.readouterr().out)
    assert d['users'] == 100 and d['items'] == 60 and d['modalities'] == {
        'image': 64, 'text': 32}


def test_stats_on_mmrec_files(tmp_path, tiny_data, capsys):
    from mambarec_pyg.data import write_mmrec
    write_mmrec(tiny_data, tmp_path, 'small')
    assert main(['stats', '--data', str(tmp_path), '--dataset', 'small']) == 0
    assert 'small' in capsys.readouterr().out


@pytest.mark.parametrize('argv, code, message', [
    (['train', '--synthetic', 'tiny', '--model.mmd-weigth', '1'], 2,
     "did you mean '--model.mmd-weight'"),
    (['train', '--synthetic', 'tiny', '--train.max-epochs', 'ten'], 2,
     "argument --train.max-epochs: expected an integer, got 'ten'"),
    (['train', '--synthetic', 'tiny', '--model.dropout', '1.5'], 2,
     'model.dropout: expected a probability'),
    (['train', '--synthetic', 'tiny', '--model.local-alignment', 'maybe'], 2,
     'expected true or false'),
    (['train', '--synthetic', 'tiny', '--train.valid-metric', 'recall@7'], 2,
     'train.valid_metric'),
    (['train'], 2, 'no data chosen'),
    (['train', '--synthetic', 'enormous'], 1, "synthetic preset 'enormous' unknown"),
    (['train', '--data', '/nonexistent', '--dataset', 'baby'], 1,
     "dataset directory '/nonexistent/baby' not found"),
    (['train', '--config', '/nonexistent.yaml'], 2, 'config file not found'),
    (['evaluate', '/nonexistent/best.pt'], 1, 'checkpoint not found'),
    (['frobnicate'], 2, 'invalid choice'),
    pytest.param(['train', '--synthetic', 'tiny', '--device', 'cuda'], 2,
                 'CUDA is not available', marks=pytest.mark.skipif(
                     torch.cuda.is_available(), reason='CUDA present')),
    (['evaluate', '/nonexistent/best.pt', '--device', 'tpu'], 1, 'not found'),
])
def test_bad_command_lines(argv, code, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == code
    err = capsys.readouterr().err
    assert message in err
    assert 'Traceback' not in err


def test_config_file_and_flag_precedence(tmp_path, capsys):
    cfg = Config.from_dict({'data': {'synthetic': 'tiny'},
                            'train': {'max_epochs': 1, 'batch_size': 512,
                                      'device': 'cpu'},
                            'model': {'mmd_weight': 0.1}})
    path = tmp_path / 'run.yaml'
    cfg.to_yaml(path)
    out = tmp_path / 'run'
    assert main(['train', '--config', str(path), '--output', str(out), '--quiet',
                 '--model.mmd_weight', '0.2']) == 0  # underscores work too
    saved = yaml.safe_load((out / 'config.yaml').read_text())
    assert saved['model']['mmd_weight'] == 0.2  # flag beats file
    assert saved['train']['batch_size'] == 512  # file beats default
    assert saved['train']['max_epochs'] == 1


def test_every_config_field_has_a_flag(capsys):
    import dataclasses
    from mambarec_pyg.cli import build_parser
    parser = build_parser()
    train = parser._subparsers._group_actions[0].choices['train']
    flags = {o for a in train._actions for o in a.option_strings}
    assert '--model.name' in flags
    for section, cls in (('data', Config().data.__class__),
                         ('model', Config().model.__class__),
                         ('train', Config().train.__class__)):
        for f in dataclasses.fields(cls):
            assert f'--{section}.{f.name.replace("_", "-")}' in flags


def test_value_parsing():
    from typing import Optional, Tuple, Union
    assert _parse('0.5', float) == 0.5
    assert _parse('5,10,20', Tuple[int, ...]) == (5, 10, 20)
    assert _parse('none', Optional[str]) is None
    assert _parse('image,text', Optional[Tuple[str, ...]]) == ('image', 'text')
    assert _parse('1.5', Union[float, Tuple[float, ...]]) == 1.5
    assert _parse('1,2', Union[float, Tuple[float, ...]]) == (1.0, 2.0)
    assert _parse('False', bool) is False
    with pytest.raises(ValueError, match='expected a number'):
        _parse('x', float)


def test_help_exits_zero(capsys):
    assert main(['--help']) == 0
    assert main(['train', '--help']) == 0
    out = capsys.readouterr().out
    assert '--model.mmd-weight' in out and '--SECTION.FIELD' in out


def test_search_command(tmp_path, capsys):
    out = tmp_path / 'grid'
    assert main(['search', '--synthetic', 'tiny', '--output', str(out),
                 '--grid', 'model.mmd_weight=0.1,0.2', '--grid',
                 'model.mmd_bandwidth=1.0', *FAST]) == 0
    printed = capsys.readouterr().out
    assert 'selected (by valid recall@20)' in printed
    saved = json.loads((out / 'search.json').read_text())
    assert len(saved['points']) == 2 and saved['complete']
    assert main(['search', '--synthetic', 'tiny', '--grid', 'model.nope=1']) == 2
    assert "unknown option 'model.nope'" in capsys.readouterr().err
