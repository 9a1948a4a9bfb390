"""Serving calls (``recommend``, ``score``, ``eval_embeddings``) from many threads at
once give exactly the single-threaded results and leave the module untouched -- also
on a model left in training mode, whose dropout, noise, edge sampling and BatchNorm
updates must not leak into serving."""
from __future__ import annotations

import copy
import threading
from typing import Callable, Dict, List

import pytest
import torch

from support import MFConfig, random_batch

from mambarec_pyg.models import get_config_class, list_models
from mambarec_pyg.models.registry import PAPER_ORDER
from mambarec_pyg.train.evaluate import evaluate
from mambarec_pyg.train.experiment import build_model
from mambarec_pyg.utils import eval_view, seed_everything

BUILT_IN = [name for name in list_models() if name in PAPER_ORDER]
#: models whose training mode computes something else (dropout, noise, sampled
#: edges, BatchNorm batch statistics): 8 threads x 100 calls each.
HEAVY = ('mambarec', 'test_mf')


def _trained_in_train_mode(name: str, data) -> torch.nn.Module:
    """The model after two optimiser steps, left in training mode (as ``fit`` left
    it): parameters and BatchNorm statistics are no longer their initial values."""
    seed_everything(0)
    config = MFConfig(dropout=0.5) if name == 'test_mf' else get_config_class(name)()
    model = build_model(data, config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    if params:
        opt = torch.optim.Adam(params, lr=0.05)
        for step in range(2):
            model.on_epoch_start(step)
            opt.zero_grad()
            model.loss(random_batch(data, 64, seed=step))['total'].backward()
            opt.step()
    assert model.training
    return model


def _calls(model, users: torch.Tensor, items: torch.Tensor
           ) -> Dict[str, Callable[[], List[torch.Tensor]]]:
    return {
        'recommend': lambda: list(model.recommend(users, k=10, return_scores=True)),
        'score': lambda: [model.score(users, items)],
        'eval_embeddings': lambda: list(model.eval_embeddings()),
    }


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Equal values (sparse embeddings, e.g. ItemKNNCBF's, compared densely)."""
    if a.is_sparse or b.is_sparse:
        a, b = a.to_dense(), b.to_dense()
    return torch.equal(a, b)


def _state(model) -> Dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _modes(model) -> List[bool]:
    return [m.training for m in model.modules()]


@pytest.mark.parametrize('name', BUILT_IN + ['test_mf'])
def test_serving_from_threads_equals_single_threaded_and_mutates_nothing(name,
                                                                         tiny_data):
    model = _trained_in_train_mode(name, tiny_data)
    users = torch.arange(int(tiny_data['user'].num_nodes))
    items = torch.randint(int(tiny_data['item'].num_nodes), users.shape,
                          generator=torch.Generator().manual_seed(1))
    calls = _calls(model, users, items)
    state, modes = _state(model), _modes(model)

    # the single-threaded results are those of the model in eval mode
    reference = copy.deepcopy(model).eval()
    ref_calls = _calls(reference, users, items)
    expected = {k: f() for k, f in calls.items()}
    for key, f in ref_calls.items():
        for got, want in zip(expected[key], f()):
            assert _same(got, want), key
    assert _modes(model) == modes

    rounds = 100 if name in HEAVY else 12
    keys = list(calls)
    mismatches: List[str] = []
    errors: List[BaseException] = []
    start = threading.Barrier(8)

    def worker(t: int) -> None:
        try:
            start.wait()
            for r in range(rounds):
                key = keys[(t + r) % len(keys)]
                got = calls[key]()
                if not all(_same(a, b) for a, b in zip(got, expected[key])):
                    mismatches.append(f'thread {t} call {r} ({key})')
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t, )) for t in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert not mismatches, f'{len(mismatches)} of {8 * rounds} differ: {mismatches[:3]}'
    assert _modes(model) == modes  # still in training mode, every submodule
    after = _state(model)
    assert after.keys() == state.keys()
    assert all(torch.equal(after[k], state[k]) for k in state), \
        [k for k in state if not torch.equal(after[k], state[k])]


def test_eval_view_shares_weights_and_changes_no_mode(tiny_data):
    model = _trained_in_train_mode('mambarec', tiny_data)
    view = eval_view(model)
    assert view is not model and type(view) is type(model)
    assert all(m.training for m in model.modules())
    assert not any(m.training for m in view.modules())
    # the same tensors, not copies: an update of the model is seen by the view
    for (k, a), (k2, b) in zip(model.state_dict(keep_vars=True).items(),
                               view.state_dict(keep_vars=True).items()):
        assert k == k2 and a is b
    with torch.no_grad():
        model.user_embedding.weight.add_(1.0)
    assert torch.equal(view.user_embedding.weight, model.user_embedding.weight)


def test_evaluate_leaves_the_mode_alone(tiny_data):
    model = _trained_in_train_mode('mambarec', tiny_data)
    state, modes = _state(model), _modes(model)
    first = evaluate(model, tiny_data, 'valid')
    assert _modes(model) == modes
    assert all(torch.equal(v, state[k]) for k, v in _state(model).items())
    assert evaluate(copy.deepcopy(model).eval(), tiny_data, 'valid') == first
