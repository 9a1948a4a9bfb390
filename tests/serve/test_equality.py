"""For every registered model (later ones included automatically): the service's
answers equal ``mambarec recommend`` for the same users.

Each model is trained for one epoch on ``tiny``, exported with ``mambarec export``
and served in process; ``mambarec recommend --format json`` ranks the same users
from the checkpoint. Tied scores may be ordered differently by the two paths (the
service puts the smaller item id first, ``torch.topk`` promises no order), so the
lists are compared group by group of equal scores (``serve_support``), with the
scores checked against the model's own inner products.
"""
from __future__ import annotations

import json

import numpy as np
import pytest

import support  # noqa: F401 - registers the test model, as a user's own would be
from serve_support import assert_same_ranking, require

from mambarec_pyg.cli import main
from mambarec_pyg.models import list_models
from mambarec_pyg.train.experiment import load_run

require('fastapi')
require('httpx')
from fastapi.testclient import TestClient  # noqa: E402

from mambarec_pyg.serve.app import create_app  # noqa: E402


def _dense(x):
    return (x.to_dense() if x.is_sparse else x).double()


@pytest.mark.parametrize('name', list_models())
def test_service_equals_mambarec_recommend(name, checkpoint, tiny_data, tmp_path,
                                           capsys):
    ckpt = checkpoint(name)
    out = tmp_path / 'export'
    assert main(['export', str(ckpt), '--output', str(out)]) == 0
    model, data, _ = load_run(ckpt, data=tiny_data)
    user_emb, item_emb = model.eval_embeddings()
    # the model's own scores (sparse embeddings: content-based kNN, 'sparse_dot')
    exact = (_dense(user_emb) @ _dense(item_emb).t()).detach().numpy()
    U, N = exact.shape
    seen = np.zeros((U, N), dtype=bool)
    index = model.training_items()
    for u in range(U):
        seen[u, index.col[index.rowptr[u]:index.rowptr[u + 1]].numpy()] = True
    users = list(range(U))
    with TestClient(create_app(out, sighup=False)) as client:
        sparse = user_emb.is_sparse
        assert client.get('/metadata').json()['manifest']['score_function'] == \
            ('sparse_dot' if sparse else 'dot')
        for k in (10, N):  # N: more than any user's candidates
            capsys.readouterr()
            assert main(['recommend', str(ckpt), '--users', ','.join(map(str, users)),
                         '--k', str(k), '--format', 'json']) == 0
            cli = json.loads(capsys.readouterr().out)
            r = client.post('/recommend', json={'users': users, 'k': k})
            assert r.status_code == 200, r.text
            served = r.json()['results']
            for u, c, s in zip(users, cli, served):
                assert c['user'] == s['user'] == u and s['known']
                # the service's scores are the model's inner products
                np.testing.assert_allclose(s['scores'], exact[u, s['items']],
                                           rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(s['scores'], c['scores'], rtol=1e-5,
                                           atol=1e-6)
                assert_same_ranking(s['items'], c['items'], exact[u], ~seen[u])
            # single requests answer as the batch does
            for u in (0, U - 1):
                one = client.get(f'/recommend?user={u}&k={k}').json()
                assert one['items'] == served[u]['items']


def test_the_comparison_can_fail():
    scores = np.array([3.0, 2.0, 2.0, 1.0, 0.5])
    every = np.ones(5, dtype=bool)
    assert_same_ranking([0, 2, 1], [0, 1, 2], scores, every)  # a tie, reordered
    assert_same_ranking([0, 1], [0, 2], scores, every)  # a tie cut by k
    for got, want in (([0, 1, 3], [0, 1, 2]), ([1, 0], [0, 1]), ([0, 3], [0, 1]),
                      ([0], [0, 1])):
        with pytest.raises(AssertionError):
            assert_same_ranking(got, want, scores, every)
    with pytest.raises(AssertionError):  # an excluded item
        assert_same_ranking([0, 1], [0, 1], scores,
                            np.array([True, False, True, True, True]))
    with pytest.raises(AssertionError):  # a better item left out by both
        assert_same_ranking([1, 2], [1, 2], scores, every)
