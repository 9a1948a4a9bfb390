"""SMORE against plain computations: numpy kNN graphs and their element-wise
maximum, the spectral filters as dense DFT matrices (checked against numpy's FFT),
dense propagation, every loss part and its gradients; and it learns."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from support import (assert_beats_popularity, assert_grads_match, build_float64,
                     default_dtype, feature_variants, loss_and_grads,
                     numpy_normalized_adjacency, random_batch, train_through_cli)

from mambarec_pyg.config import Config, ConfigError, DataConfig
from mambarec_pyg.models import SMORE, SMOREConfig
from mambarec_pyg.models.smore import DATASET_DEFAULTS
from mambarec_pyg.nn.spectral import SpectralFilter

KNN = {'image': 12, 'text': 7, 'audio': 5}


@pytest.fixture(scope='module')
def variants(tiny_data):
    return feature_variants(tiny_data)


def _build(data, **kwargs) -> SMORE:
    kwargs = dict(dict(image_knn_k=KNN['image'], text_knn_k=KNN['text'],
                       knn_k=KNN['audio']), **kwargs)
    return build_float64(SMORE, data, **kwargs)


def _numpy_knn(x: np.ndarray, k: int) -> np.ndarray:
    """Similarity-weighted top-k cosine graph (self included, ties to the lower id),
    D^-1/2 W D^-1/2 with the row sums of the kept weights; similarities in the
    features' dtype (float32 here, as ItemKNN), the rest in float64."""
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    sim = (xn @ xn.T).astype(np.float64)
    W = np.zeros_like(sim)
    for i in range(len(sim)):
        keep = np.argsort(-sim[i], kind='stable')[:k]
        W[i, keep] = sim[i, keep]
    d = W.sum(1) ** -0.5
    return d[:, None] * W * d[None, :]


def _numpy_max_union(graphs) -> np.ndarray:
    """Element-wise maximum over the graphs that have an entry."""
    stacked = np.stack([np.where(g != 0, g, -np.inf) for g in graphs])
    out = stacked.max(0)
    return np.where(np.isfinite(out), out, 0.0)


def _dft(d: int):
    """Dense orthonormal rfft [d, d/2+1] and irfft [d/2+1, d] (complex) matrices."""
    j = np.arange(d)[:, None]
    k = np.arange(d // 2 + 1)[None, :]
    forward = np.exp(-2j * np.pi * j * k / d) / np.sqrt(d)
    c = np.full(d // 2 + 1, 2.0)
    c[0] = 1.0
    if d % 2 == 0:
        c[-1] = 1.0
    inverse = (c[:, None] * np.exp(2j * np.pi * k.T * j.T / d)) / np.sqrt(d)
    return torch.from_numpy(forward), torch.from_numpy(inverse)


def _irfft(spectrum, inverse):
    # the imaginary parts of the DC and Nyquist terms do not contribute
    spectrum = spectrum.clone()
    spectrum[:, 0] = spectrum[:, 0].real
    if inverse.size(1) % 2 == 0:
        spectrum[:, -1] = spectrum[:, -1].real
    return (spectrum @ inverse).real


def test_dft_matrices_match_numpy_fft():
    rng = np.random.default_rng(0)
    for d in (8, 9):
        x = rng.standard_normal((5, d))
        forward, inverse = _dft(d)
        spec = torch.from_numpy(x).to(torch.complex128) @ forward
        np.testing.assert_allclose(spec.numpy(), np.fft.rfft(x, axis=1, norm='ortho'),
                                   atol=1e-12)
        y = spec * torch.from_numpy(rng.standard_normal(d // 2 + 1) +
                                    1j * rng.standard_normal(d // 2 + 1))
        np.testing.assert_allclose(_irfft(y, inverse).numpy(),
                                   np.fft.irfft(y.numpy(), n=d, axis=1, norm='ortho'),
                                   atol=1e-12)


def test_spectral_filter_matches_numpy():
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        layer = SpectralFilter(6, 3)
    xs = [torch.randn(4, 6, dtype=torch.float64) for _ in range(3)]
    filtered, fusion = layer(xs)
    w = [torch.view_as_complex(p.detach()).numpy() for p in layer.modality_weights]
    spectra = [np.fft.rfft(x.numpy(), axis=1, norm='ortho') for x in xs]
    for got, s, wm in zip(filtered, spectra, w):
        np.testing.assert_allclose(got.detach().numpy(),
                                   np.fft.irfft(s * wm, n=6, axis=1, norm='ortho'),
                                   atol=1e-12)
    wf = torch.view_as_complex(layer.fusion_weight.detach()).numpy()
    want = np.fft.irfft(spectra[0] * spectra[1] * spectra[2] * wf, n=6, axis=1,
                        norm='ortho')
    np.testing.assert_allclose(fusion.detach().numpy(), want, atol=1e-12)
    with pytest.raises(ValueError, match='expected 3 inputs'):
        layer(xs[:2])


@pytest.mark.parametrize('variant', ['image+text', 'text', 'image+text+audio'])
def test_item_graphs_match_numpy(variants, variant):
    data = variants[variant]
    model = _build(data)
    graphs = []
    for m in model.modalities:
        want = _numpy_knn(data['item'][m].numpy(), KNN[m])
        got = model.graphs[f'item_graph_{m}'].to_dense().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)
        graphs.append(got)
        assert (got != 0).sum() == data['item'].num_nodes * KNN[m]
    np.testing.assert_allclose(model.graphs['fusion_graph'].to_dense().numpy(),
                               _numpy_max_union(graphs), rtol=1e-12, atol=1e-15)


def _plain(model, data):
    """SMORE's forward as dense float64 matrices, the FFTs as DFT matrices."""
    U, d = model.num_users, model.config.embedding_size
    A = numpy_normalized_adjacency(data)
    R = A[:U, U:]
    # the kNN graphs as built (checked against numpy above), their maximum here
    graphs = {m: model.graphs[f'item_graph_{m}'].to_dense()
              for m in model.modalities}
    S_f = torch.from_numpy(_numpy_max_union([g.numpy() for g in graphs.values()]))
    forward, inverse = _dft(d)

    def lin(layer, x):
        out = x @ layer.weight.t()
        return out + layer.bias if layer.bias is not None else out

    E = torch.cat([model.user_embedding.weight, model.item_embedding.weight])
    h, layers = E, [E]
    for _ in range(model.config.n_ui_layers):
        h = A @ h
        layers.append(h)
    C = sum(layers) / len(layers)
    spectra = [lin(model.projections[m], model.features[m]).to(torch.complex128) @
               forward for m in model.modalities]
    Ei = model.item_embedding.weight

    def view(S, gated):
        for _ in range(model.config.n_layers):
            gated = S @ gated
        return torch.cat([R @ gated, gated])

    product = spectra[0]
    for s in spectra[1:]:
        product = product * s
    conv_f = _irfft(product * torch.view_as_complex(model.spectrum.fusion_weight),
                    inverse)
    z_f = view(S_f, Ei * torch.sigmoid(lin(model.fusion_gate, conv_f)))
    parts = [torch.sigmoid(lin(model.fusion_preference_gate, C)) * z_f]
    for m, s, w in zip(model.modalities, spectra, model.spectrum.modality_weights):
        conv = _irfft(s * torch.view_as_complex(w), inverse)
        z = view(graphs[m], Ei * torch.sigmoid(lin(model.item_gates[m], conv)))
        q = model.queries[m]
        att = torch.softmax(lin(q[2], torch.tanh(lin(q[0], z_f))), dim=1)
        parts.append(torch.sigmoid(lin(model.preference_gates[m], C)) * att * z)
    side = sum(parts) / len(parts)
    return C + side, side, C


def _nce(x, y, t):
    x, y = F.normalize(x, dim=1), F.normalize(y, dim=1)
    logits = x @ y.t() / t
    return -(logits.diag() - logits.logsumexp(1)).mean()


@pytest.mark.parametrize('variant', ['image+text', 'text', 'image+text+audio'])
def test_forward_loss_and_gradients_match_a_plain_computation(variants, variant):
    data = variants[variant]
    # dropout 0: training mode is then deterministic
    model = _build(data, n_ui_layers=2, n_layers=2, dropout=0.0, reg_weight=0.03,
                   cl_weight=0.2, cl_temperature=0.3).train()
    U = model.num_users
    final, side, C = _plain(model, data)
    user, item = model.embed()
    torch.testing.assert_close(user, final[:U], rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(item, final[U:], rtol=1e-10, atol=1e-12)

    batch = random_batch(data, 40, seed=1, nominal_size=64)
    parts, grads = loss_and_grads(model, batch)
    assert set(parts) == {'total', 'bpr', 'reg', 'cl'}
    assert all(g.abs().sum() > 0 for g in grads.values())

    final, side, C = _plain(model, data)
    u, i, j = batch
    eu, ei, ej = final[u], final[U + i], final[U + j]
    bpr = -F.logsigmoid((eu * ei).sum(1) - (eu * ej).sum(1)).mean()
    reg = 0.03 * (eu.square().sum() + ei.square().sum() + ej.square().sum()) / 2 / 64
    cl = _nce(side[U + i], C[U + i], 0.3) + _nce(side[u], C[u], 0.3)
    torch.testing.assert_close(parts['bpr'], bpr)
    torch.testing.assert_close(parts['reg'], reg)
    torch.testing.assert_close(parts['cl'], cl)
    total = bpr + reg + 0.2 * cl
    torch.testing.assert_close(parts['total'], total)
    assert_grads_match(model, total, grads, rtol=1e-8, atol=1e-11)


def test_dropout_acts_on_the_preference_gates_in_training_only(tiny_data):
    model = _build(tiny_data, dropout=0.5)
    assert SMORE.stochastic_training
    model.eval()
    a, b = model.embed(), model.embed()
    assert torch.equal(a[0], b[0])
    reference = _build(tiny_data, dropout=0.0).eval()
    torch.testing.assert_close(a[0], reference.embed()[0])  # eval: no dropout
    model.train()
    torch.manual_seed(1)
    c = model.embed()
    assert not torch.allclose(c[0], a[0])


def test_config_defaults_grid_and_errors():
    c = SMOREConfig()
    assert (c.n_ui_layers, c.n_layers, c.image_knn_k, c.text_knn_k) == (4, 1, 40, 15)
    assert (c.reg_weight, c.cl_weight, c.dropout) == (1e-4, 0.01, 0.1)
    assert c.knn_k_of('image') == 40 and c.knn_k_of('text') == 15
    assert c.knn_k_of('audio') == 10
    assert SMORE.protocol['lr_decay'] == 0.96
    assert DATASET_DEFAULTS['baby'] == {
        f'model.{k}': getattr(c, k) for k in
        ('n_ui_layers', 'image_knn_k', 'text_knn_k', 'cl_weight', 'reg_weight',
         'dropout')}
    sports = Config(data=DataConfig(synthetic='tiny'), model=c).with_overrides(
        DATASET_DEFAULTS['sports']).model
    assert (sports.n_ui_layers, sports.cl_weight, sports.dropout) == (3, 0.03, 0.0)
    grid = SMOREConfig.GRID
    assert np.prod([len(v) for v in grid.values()]) == 128
    for key, bad in [('n_ui_layers', -1), ('image_knn_k', 0), ('dropout', 1.0),
                     ('cl_temperature', 0.0), ('reg_weight', -1.0)]:
        with pytest.raises(ConfigError, match=f'model.{key}'):
            SMOREConfig(**{key: bad})


def test_beats_popularity_through_the_cli(tiny_data, tmp_path):
    results = train_through_cli(tmp_path, 'smore', '--train.batch-size', '128',
                                '--train.lr', '0.01', '--train.max-epochs', '10')
    assert_beats_popularity(results, tiny_data)
