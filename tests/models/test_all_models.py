"""Every registered model through the shared interface: any number of modalities
(or a clear error), one epoch of training, checkpoint, resume, evaluate and
recommend, and CUDA against CPU.

Per-model formula tests (against plain computations) and the learning test (beats
most-popular on ``tiny``) live in each model's own test file.
"""
from __future__ import annotations

import json

import pytest
import torch

from support import default_dtype, random_batch, with_item_features

from mambarec_pyg.config import Config, DataConfig, TrainConfig
from mambarec_pyg.data.errors import DataError
from mambarec_pyg.data.sampling import BPRBatch
from mambarec_pyg.models import get_config_class, get_model_class, list_models
from mambarec_pyg.models.registry import PAPER_ORDER
from mambarec_pyg.train.experiment import build_model, load_run, run
from mambarec_pyg.utils import seed_everything

UI = ('user', 'interacts', 'item')
#: Every registered model (the built-in ones and any registered by the tests):
#: each runs every case below unless :data:`CANNOT` names the case with a reason.
REGISTERED = list_models()
#: ``(model, case) -> why the model cannot run the case``; cases: ``'train'``
#: (one training step, resume).
CANNOT = {
    ('popularity', 'train'): 'most-popular ranking has nothing to train',
    ('itemknncbf', 'train'): 'content-based item kNN has nothing to train',
}


def _cases(case: str):
    """The registered models as parameters, those that cannot run ``case`` skipped
    with their reason."""
    return [pytest.param(name, marks=pytest.mark.skip(reason=CANNOT[name, case]))
            if (name, case) in CANNOT else name for name in REGISTERED]


@pytest.fixture(scope='module')
def datasets(tiny_data):
    g = torch.Generator().manual_seed(0)
    feats = {m: tiny_data['item'][m].clone() for m in tiny_data.modalities}
    three = dict(feats, audio=torch.randn(tiny_data['item'].num_nodes, 20,
                                          generator=g))
    variants = {3: three, 1: {'text': feats['text']}, 0: {}}
    return {n: with_item_features(tiny_data, features, name='test', splits=True)
            for n, features in variants.items()}


def test_every_registered_model_is_covered():
    # the list is the registry at collection; the built-in models are among them
    assert set(PAPER_ORDER) <= set(REGISTERED)
    # every exception names a registered model, a known case and a reason
    for (name, case), reason in CANNOT.items():
        assert name in REGISTERED and case in ('train', ) and reason


@pytest.mark.parametrize('name', _cases('train'))
@pytest.mark.parametrize('num_modalities', [3, 1, 0])
def test_one_epoch_any_modalities_or_a_clear_error(name, num_modalities, datasets):
    data = datasets[num_modalities]
    cls = get_model_class(name)
    supported = cls.min_modalities <= num_modalities and (
        cls.max_modalities is None or num_modalities <= cls.max_modalities)
    if not supported:
        with pytest.raises(DataError, match=f"model '{name}' (needs|works with)"):
            build_model(data, get_config_class(name)())
        return
    seed_everything(0)
    model = build_model(data, get_config_class(name)())
    model.train()
    model.on_epoch_start(0)
    parts = model.loss(random_batch(data, 64))
    assert 'total' in parts and all(v.dim() == 0 for v in parts.values())
    assert all(torch.isfinite(v) for v in parts.values())
    parts['total'].backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert grads and any(g is not None and g.abs().sum() > 0 for g in grads)
    user, item = model.eval_embeddings()
    assert user.shape[0] == data['user'].num_nodes
    assert item.shape[0] == data['item'].num_nodes
    assert torch.isfinite(user).all() and torch.isfinite(item).all()


@pytest.mark.parametrize('name', REGISTERED)
def test_save_resume_evaluate_recommend_round_trip(name, tiny_data, tmp_path):
    config = Config(data=DataConfig(synthetic='tiny'),
                    model=get_config_class(name)(),
                    train=TrainConfig(device='cpu', batch_size=256, max_epochs=2,
                                      checkpoint_interval_s=0))
    out = tmp_path / 'run'
    first = run(config, out, data=tiny_data, quiet=True)
    results = json.loads((out / 'results.json').read_text())
    assert results['model'] == name and results['test']
    if (name, 'train') not in CANNOT:
        longer = config.with_overrides({'train.max_epochs': 3})
        resumed = run(longer, out, data=tiny_data, resume=True, quiet=True)
        assert resumed.epochs == 3 and resumed.history[:2] == first.history
    model, data, cfg = load_run(out / 'best.pt', data=tiny_data)
    assert type(model).name == name and type(cfg.model).name == name
    from mambarec_pyg.train.evaluate import evaluate
    saved = json.loads((out / 'results.json').read_text())
    assert evaluate(model, data, 'test')['recall@20'] == pytest.approx(
        saved['test']['recall@20'], abs=1e-6)
    users = torch.tensor([0, 3, 7])
    top = model.recommend(users, k=5)
    train = tiny_data[UI].edge_index
    for u, row in zip(users.tolist(), top.tolist()):
        seen = set(train[1, train[0] == u].tolist())
        assert len(row) == 5 and not seen & set(row)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA device')
@pytest.mark.parametrize('name', _cases('train'))
def test_cuda_matches_cpu(name, tiny_data):
    """Loss parts, gradients and eval embeddings of one batch on CUDA and on the CPU
    (float64, same weights; models with random draws in training use eval mode)."""
    with default_dtype(torch.float64):
        seed_everything(0)
        cpu = build_model(tiny_data, get_config_class(name)())
        seed_everything(0)
        gpu = build_model(tiny_data, get_config_class(name)())
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda()
    for model in (cpu, gpu):
        model.train(not model.stochastic_training)
        model.on_epoch_start(0)
    batch = random_batch(tiny_data, 64)
    parts_cpu = cpu.loss(batch)
    parts_gpu = gpu.loss(BPRBatch(*(t.cuda() for t in batch), 64))
    assert parts_cpu.keys() == parts_gpu.keys()
    for key in parts_cpu:
        torch.testing.assert_close(parts_gpu[key].cpu(), parts_cpu[key], rtol=1e-7,
                                   atol=1e-10, msg=key)
    parts_cpu['total'].backward()
    parts_gpu['total'].backward()
    grads_gpu = dict(gpu.named_parameters())
    for pname, p in cpu.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(grads_gpu[pname].grad.cpu(), p.grad, rtol=1e-6,
                                       atol=1e-9, msg=pname)
    for a, b in zip(cpu.eval_embeddings(), gpu.eval_embeddings()):
        torch.testing.assert_close(b.cpu(), a, rtol=1e-7, atol=1e-10)
