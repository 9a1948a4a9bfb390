"""Grid search over MMD weight x bandwidth, selected on the validation split."""
import json

import pytest

from mambarec_pyg.config import Config, ConfigError, DataConfig, TrainConfig
from mambarec_pyg.train import search as search_mod
from mambarec_pyg.train.search import default_grid, grid_search
from mambarec_pyg.train.trainer import TrainResult



def _config(**train):
    base = dict(device='cpu', max_epochs=2, batch_size=256)
    base.update(train)
    return Config(data=DataConfig(synthetic='tiny'), train=TrainConfig(**base))


def test_default_grid_is_the_papers():
    assert default_grid(Config()) == {'model.mmd_weight': [0.1, 0.15, 0.2],
                                      'model.mmd_bandwidth': [1.0, 1.5, 2.0]}
    assert Config().train.seed == 999


def test_tiny_grid_end_to_end(tiny_data, tmp_path):
    grid = {'model.mmd_weight': [0.1, 0.2], 'model.mmd_bandwidth': [1.5]}
    result = grid_search(tiny_data, _config(), grid, tmp_path)
    assert [p['values'] for p in result.points] == [
        {'model.mmd_weight': 0.1, 'model.mmd_bandwidth': 1.5},
        {'model.mmd_weight': 0.2, 'model.mmd_bandwidth': 1.5}]
    best = max(result.points, key=lambda p: p['valid']['recall@20'])
    assert result.selected is best
    saved = json.loads((tmp_path / 'search.json').read_text())
    assert saved['complete'] and len(saved['points']) == 2
    assert saved['selected']['name'] == best['name']
    assert saved['test'] == pytest.approx(best['test'])
    assert saved['config']['train']['max_epochs'] == 2
    assert {'torch', 'torch_geometric', 'python'} <= set(saved['environment'])
    for p in result.points:
        assert p['epochs'] == 2 and p['time_s'] > 0
        run_cfg = json.loads((tmp_path / p['name'] / 'results.json').read_text())
        assert run_cfg['config']['model']['mmd_weight'] == p['values']['model.mmd_weight']
    # resuming reuses the finished points without training again
    again = grid_search(tiny_data, _config(), grid, tmp_path, resume=True)
    assert all(p.get('reused') for p in again.points)
    assert again.selected['name'] == result.selected['name']


def test_selects_by_valid_never_by_test(tiny_data, monkeypatch):
    # fabricated runs: the best test point is not the best valid point
    outcomes = {0.1: (0.30, 0.90), 0.2: (0.50, 0.10)}

    def fake_run(cfg, out, **kw):
        v, t = outcomes[cfg.model.mmd_weight]
        return TrainResult('max_epochs', 0, {'recall@20': v}, {'recall@20': t}, 1)

    monkeypatch.setattr(search_mod, 'run', fake_run)
    result = grid_search(tiny_data, _config(), {'model.mmd_weight': [0.1, 0.2]})
    assert result.selected['values'] == {'model.mmd_weight': 0.2}
    assert result.test == {'recall@20': 0.10}


def test_bad_grid_option_fails_before_training(tiny_data):
    with pytest.raises(ConfigError, match="mmd_wieght"):
        grid_search(tiny_data, _config(), {'model.mmd_wieght': [0.1]})
    with pytest.raises(ConfigError, match='at least one value'):
        grid_search(tiny_data, _config(), {'model.mmd_weight': []})
