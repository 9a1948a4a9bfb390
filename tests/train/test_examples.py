"""The examples run end to end (on small data)."""
import importlib.util
import json
import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[2] / 'examples'



def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f'{name}.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quickstart_runs(capsys):
    runpy.run_path(str(EXAMPLES / 'quickstart.py'), run_name='__main__')
    out = capsys.readouterr().out
    assert 'valid Recall@20' in out and 'top-5 for users 0, 1' in out


def test_amazon_baby_uses_mmrec_files_when_present(tmp_path, tiny_data, capsys,
                                                   monkeypatch):
    from mambarec_pyg.data import write_mmrec
    write_mmrec(tiny_data, tmp_path / 'data', 'baby')  # a stand-in "baby" dataset
    monkeypatch.chdir(tmp_path)
    baby = _load('amazon_baby')
    assert baby.find_baby(str(tmp_path / 'data')) == tmp_path / 'data'
    assert baby.find_baby(str(tmp_path / 'nothing')) is None
    code = baby.main(['--data', str(tmp_path / 'data'), '--epochs', '2', '--device',
                      'cpu', '--quiet', '--output', str(tmp_path / 'run')])
    assert code == 0
    out = capsys.readouterr().out
    assert 'Amazon Baby from' in out and 'MambaRec (paper)' in out
    assert 'most-popular (floor)' in out
    assert 'R@10' in out and 'N@20' in out and 'results:' in out
    saved = json.loads((tmp_path / 'run' / 'results.json').read_text())
    model = saved['config']['model']
    assert (model['variant'], model['reduction_factor'], model['mmd_weight'],
            model['mmd_bandwidth']) == ('reference', 8, 0.15, 1.5)
    assert saved['config']['train']['batch_size'] == 2048
    assert saved['epochs'] == 2


def test_amazon_baby_says_when_it_falls_back_to_synthetic(tmp_path, monkeypatch,
                                                          capsys):
    baby = _load('amazon_baby')
    calls = {}

    def fake_run(config, out, **kw):  # no Baby-scale training in the test suite
        calls['data'] = config.data
        raise SystemExit(0)

    monkeypatch.setattr(baby, 'run', fake_run)
    monkeypatch.setattr(baby, 'REPO', tmp_path)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        baby.main(['--quick'])
    assert 'not found' in capsys.readouterr().out
    assert calls['data'].synthetic == 'baby' and calls['data'].dataset is None
