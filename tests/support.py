"""Helpers shared by test files: a small matrix-factorisation model registered from
the tests, as a user would register their own model; random BPR batches, item-feature
variants of a dataset, float64 construction and the loss-and-gradients comparison
for the per-model formula tests;
plain computations several model tests share (the user co-occurrence graph from a
naive loop, DualGNN's and DRAGON's modality networks and loss); and the "beats
most-popular through the CLI" learning check."""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch_geometric.data import HeteroData

from mambarec_pyg.cli import main
from mambarec_pyg.config import ModelConfig
from mambarec_pyg.data.sampling import BPRBatch
from mambarec_pyg.models import Popularity, Recommender, register
from mambarec_pyg.train.evaluate import evaluate

UI = ('user', 'interacts', 'item')


@dataclass
class MFConfig(ModelConfig):
    """BPR matrix factorisation for the tests."""

    #: embedding width.
    dim: int = 16
    #: dropout on the user embeddings in training mode (so the torch RNG matters).
    dropout: float = 0.1
    #: weight of the L2 penalty.
    reg_weight: float = 1e-4


@register('test_mf')
class MF(Recommender):
    """BPR matrix factorisation with dropout (a model defined outside the package)."""

    config_class = MFConfig

    def __init__(self, data, config: MFConfig = None):
        super().__init__(data, config)
        dim = self.config.dim
        self.user = torch.nn.Parameter(torch.empty(self.num_users, dim))
        self.item = torch.nn.Parameter(torch.empty(self.num_items, dim))
        torch.nn.init.xavier_uniform_(self.user)
        torch.nn.init.xavier_uniform_(self.item)
        self.epochs_started = []

    def embed(self) -> Tuple[Tensor, Tensor]:
        return F.dropout(self.user, self.config.dropout, self.training), self.item

    def on_epoch_start(self, epoch: int):
        self.epochs_started.append(epoch)
        return {'started': epoch}

    def loss(self, batch) -> Dict[str, Tensor]:
        users, pos, neg = batch
        u, i = self.embed()
        eu, ep, en = u[users], i[pos], i[neg]
        # per-triple terms through the batch's reductions, so that the loss does
        # not depend on how the batch is split over processes
        bpr = batch.mean(-F.logsigmoid((eu * ep).sum(-1) - (eu * en).sum(-1)))
        reg = self.config.reg_weight * batch.sum(
            eu.pow(2).sum(-1) + ep.pow(2).sum(-1) + en.pow(2).sum(-1)) / 2 / \
            batch.nominal_size
        return {'total': bpr + reg, 'bpr': bpr, 'reg': reg}


# -- building blocks of the per-model tests ----------------------------------------
def random_batch(data, size: int = 32, seed: int = 0,
                 nominal_size: Optional[int] = None) -> BPRBatch:
    """``size`` BPR triples drawn from ``data``'s training edges with a fresh
    ``torch.Generator`` seeded with ``seed``: first ``size`` edge indices, then
    ``size`` uniform negative items (that order, so the draws are fixed by the seed).

    ``nominal_size`` is the batch's configured size :math:`B` (what the per-batch
    regularisers divide by); ``None``: ``size``. The result unpacks as
    ``users, pos, neg``."""
    g = torch.Generator().manual_seed(seed)
    ei = data[UI].edge_index
    idx = torch.randint(0, ei.size(1), (size, ), generator=g)
    neg = torch.randint(0, data['item'].num_nodes, (size, ), generator=g)
    return BPRBatch(ei[0, idx], ei[1, idx], neg,
                    size if nominal_size is None else nominal_size)


@contextlib.contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """Make ``dtype`` torch's default dtype inside the block (e.g. to build a model
    in float64); the previous default is restored on leaving, also on an error."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def with_item_features(base, features: Mapping[str, Tensor], name: Optional[str] = None,
                       splits: bool = False) -> HeteroData:
    """A new dataset with ``base``'s users, items and (cloned) training edges and the
    item feature tables ``features`` (taken as given; their order is
    ``data.modalities``). ``name``: set as ``data.name``; ``splits``: the validation
    and test edges are cloned too."""
    data = HeteroData()
    if name is not None:
        data.name = name
    data['user'].num_nodes = base['user'].num_nodes
    data['item'].num_nodes = base['item'].num_nodes
    for m, x in features.items():
        data['item'][m] = x
    data.modalities = tuple(features)
    keys = ('edge_index', 'valid_edge_label_index', 'test_edge_label_index')
    for key in keys if splits else keys[:1]:
        data[UI][key] = base[UI][key].clone()
    return data


def with_modalities(base, names: Sequence[str]) -> HeteroData:
    """``base`` with the feature tables ``names``: clones of ``base``'s own, and a
    random 20-wide table (seed 3, drawn in ``names`` order) for any other name (e.g.
    ``'audio'``)."""
    g = torch.Generator().manual_seed(3)
    return with_item_features(base, {
        m: (base['item'][m].clone() if m in base.modalities else
            torch.randn(base['item'].num_nodes, 20, generator=g))
        for m in names})


def feature_variants(base) -> Dict[str, HeteroData]:
    """``base`` under ``'image+text'``, with its text table alone (``'text'``) and
    with a random 12-wide ``'audio'`` table (seed 0) added (``'image+text+audio'``)."""
    feats = {m: base['item'][m].clone() for m in base.modalities}
    audio = torch.randn(base['item'].num_nodes, 12,
                        generator=torch.Generator().manual_seed(0))
    return {'image+text': base,
            'text': with_item_features(base, {'text': feats['text']}),
            'image+text+audio': with_item_features(base, dict(feats, audio=audio))}


def numpy_bipartite_adjacency(data, edges: Optional[np.ndarray] = None) -> np.ndarray:
    """The 0/1 adjacency matrix ``[[0, R], [R^T, 0]]`` (float64, users first) of the
    user-item graph of ``data``'s training edges, or of ``edges`` (``[2, E]``: user
    ids, item ids)."""
    U, N = data['user'].num_nodes, data['item'].num_nodes
    ei = data[UI].edge_index.numpy() if edges is None else edges
    A = np.zeros((U + N, U + N))
    A[ei[0], U + ei[1]] = 1.0
    A[U + ei[1], ei[0]] = 1.0
    return A


def build_float64(model_class, data, seed: int = 0, **options):
    """``model_class(data, model_class.config_class(**options))`` built in float64
    after ``torch.manual_seed(seed)`` (the per-model formula tests' models)."""
    torch.manual_seed(seed)
    with default_dtype(torch.float64):
        return model_class(data, model_class.config_class(**options))


def loss_and_grads(model, batch) -> Tuple[Dict[str, Tensor], Dict[str, Optional[Tensor]]]:
    """``model.loss(batch)`` and the gradients of its ``'total'`` per parameter name
    (``None`` where a parameter got none); the model's gradients are zeroed after."""
    parts = model.loss(batch)
    parts['total'].backward()
    grads = {n: None if p.grad is None else p.grad.clone()
             for n, p in model.named_parameters()}
    model.zero_grad()
    return parts, grads


def assert_grads_match(model, total: Tensor, grads: Mapping[str, Optional[Tensor]],
                       rtol: float = 1e-9, atol: float = 1e-12) -> None:
    """Backpropagate the plain computation's ``total`` and compare every parameter's
    gradient with ``grads`` (from :func:`loss_and_grads`)."""
    total.backward()
    for name, p in model.named_parameters():
        if grads[name] is None:
            assert p.grad is None or not p.grad.any(), name
            continue
        torch.testing.assert_close(grads[name], p.grad, rtol=rtol, atol=atol, msg=name)


# -- learning through the command line ---------------------------------------------
def train_through_cli(tmp_path: Path, name: str, *flags: str) -> dict:
    """``mambarec train --synthetic tiny --model.name NAME`` on the CPU, quietly, into
    ``tmp_path / NAME`` with the extra ``flags``; checks the exit status is 0 and
    returns the run's ``results.json``."""
    out = Path(tmp_path) / name
    assert main(['train', '--synthetic', 'tiny', '--model.name', name, '--output',
                 str(out), '--device', 'cpu', '--quiet', *flags]) == 0
    return json.loads((out / 'results.json').read_text())


def popularity_recall(data, split: str = 'valid') -> float:
    """Recall@20 of the most-popular baseline on ``data``'s ``split``."""
    return evaluate(Popularity(data), data, split)['recall@20']


def assert_beats_popularity(results: dict, data, margin: float = 0.05) -> None:
    """The run's validation Recall@20 (``results``: its ``results.json``) is more
    than ``margin`` above the most-popular baseline's on ``data``."""
    got = results['valid']['recall@20']
    popularity = popularity_recall(data)
    assert got > popularity + margin, (got, popularity)


def naive_user_neighbours(data, k: int) -> Dict[int, list]:
    """Each user's top-``k`` co-occurring users in ``data``'s training edges as
    ``[(v, count), ...]``: MMRec's loop over item sets (pairwise intersection sizes,
    the largest positive counts first, ties by the lower id)."""
    items: Dict[int, set] = {}
    for u, i in data[UI].edge_index.t().tolist():
        items.setdefault(u, set()).add(i)
    U = data['user'].num_nodes
    out = {}
    for u in range(U):
        counts = [(-len(items.get(u, set()) & items.get(v, set())), v)
                  for v in range(U) if v != u]
        out[u] = [(v, -c) for c, v in sorted(counts) if c < 0][:k]
    return out


def naive_user_graph(lists: Mapping[int, list], num_users: int) -> Tensor:
    """The dense ``[U, U]`` aggregation matrix of neighbour lists ``{u: [(v, count),
    ...]}`` (repeats allowed): softmax of the counts over each list, summed per
    neighbour (float64; an empty list gives a zero row)."""
    W = torch.zeros(num_users, num_users, dtype=torch.float64)
    for u, entries in lists.items():
        if not entries:
            continue
        z = np.array([c for _, c in entries], dtype=np.float64)
        w = np.exp(z - z.max())
        w /= w.sum()
        for (v, _), weight in zip(entries, w):
            W[u, v] += float(weight)
    return W


# -- DualGNN and DRAGON, from the equations ------------------------------------
def numpy_normalized_adjacency(data) -> Tensor:
    """D^-1/2 A D^-1/2 of ``data``'s training graph (dense float64, users first, no
    epsilon; isolated nodes get zero rows)."""
    A = numpy_bipartite_adjacency(data)
    deg = A.sum(1)
    inv = np.where(deg > 0, deg, 1.0) ** -0.5
    return torch.from_numpy(inv[:, None] * A * inv[None, :])


def plain_modality_representations(model, data, A):
    """DualGNN's and DRAGON's modality networks from the equations (dense):
    every modality's r_m = sum_l A^l normalize([P; W2 lrelu(W1 X + b1) + b2])."""
    reps = []
    for m in model.modalities:
        enc = model.encoders[m]
        X = data['item'][m].double()
        h = F.leaky_relu(X @ enc.mlp.weight.t() + enc.mlp.bias, 0.01)
        h = h @ enc.mlp_1.weight.t() + enc.mlp_1.bias
        x = torch.cat([enc.preference, h])
        x = x / x.norm(dim=1, keepdim=True)
        out, hop = x, x
        for _ in range(model.config.n_layers):
            hop = A @ hop
            out = out + hop
        reps.append(out)
    return reps


def plain_cooccurrence_loss(model, user, item, batch, reg_weight):
    """DualGNN's and DRAGON's loss: the base-2 BPR and reg_weight times the
    preference and modality-weight penalties."""
    u, i, j = batch
    bpr = -torch.log2(torch.sigmoid((user[u] * item[i]).sum(1) -
                                    (user[u] * item[j]).sum(1))).mean()
    reg = sum(model.encoders[m].preference[u].pow(2).mean() for m in model.modalities)
    if len(model.modalities) > 1:
        reg = reg + model.user_weight.pow(2).mean()
    return bpr, reg_weight * reg


def itemknn_weights(data, k: int = 10, shrink: float = 10.0) -> np.ndarray:
    """ItemKNNCBF's item-item weights W ``[N, N]`` from the data, in numpy: the
    shrunk cosine of the concatenated item features, each row's top ``k`` (ties: the
    lower id), zeros elsewhere."""
    x = np.concatenate([data['item'][m].double().numpy() for m in data.modalities],
                       axis=1)
    n = np.linalg.norm(x, axis=1)
    sim = (x @ x.T) / (n[:, None] * n[None, :] + shrink)
    W = np.zeros_like(sim)
    for i in range(len(sim)):
        top = np.argsort(-sim[i], kind='stable')[:k]
        W[i, top] = sim[i, top]
    return W


def one_line(err: str) -> str:
    """The one non-blank line of a command's stderr (asserting there is one and no
    traceback)."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert 'Traceback' not in err
    return lines[0]


def snapshot(directory: Path) -> dict:
    """Every file of ``directory`` (hidden ones included, but the lock) and its
    bytes."""
    from mambarec_pyg.train.rundir import RunLock
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())
            if p.is_file() and p.name != RunLock.NAME}
