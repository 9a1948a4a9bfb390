r"""Synthetic multimodal recommendation data with planted structure.

The library's built-in data: interactions and item features generated so that the
content features carry real signal about what users interact with, at any size from a
tiny test set to the sizes of the paper's Amazon datasets (Table 1).

Generative story (all numbers per preset, see :data:`PRESETS`):

1. **Topics.** Each item ``i`` gets a latent topic :math:`k_i \in \{0..K-1\}` (balanced,
   randomly placed among the ids) and a latent vector
   :math:`z_i = \mu_{k_i} + s\,\epsilon_i \in \mathbb{R}^L`.
2. **Modalities from the same latent.** A non-negative, high-dimensional *visual*
   block ``image`` (like VGG16 fc7 features after ReLU),
   :math:`x^v_i = \max(0, z_i W_v + \sigma_v \eta_i)`, and a unit-norm *text* block
   ``text`` (like sentence-transformer embeddings),
   :math:`x^t_i = (z_i W_t + \sigma_t \xi_i) / \lVert\cdot\rVert`, with independent
   Gaussian noise. Items of one topic are therefore close in both modalities.
3. **Degrees.** Every user and every item has at least 5 interactions, and the totals
   are exactly the preset's: users get ``5 + Multinomial(E - 5U, w)`` interactions
   with Pareto weights ``w`` (a long tail of heavy users); items get
   ``5 + Multinomial(E - 5N, w)`` with Zipf weights by popularity rank *within their
   topic* (long-tailed item popularity). Degrees over a cap are clipped and their
   excess redrawn among the others, which keeps the totals exact.
4. **Preferences and matching.** Each user prefers a few topics (Dirichlet weights
   over three topics drawn in proportion to the topics' sizes) and explores a random
   topic with a small probability. Each of a user's interaction "slots" draws a topic
   that way; the demand per topic is then corrected to equal the item slots of that
   topic exactly, and user and item slots of each topic are paired at random (a
   configuration model per topic). Repeated ``(user, item)`` pairs are removed by
   degree-preserving swaps of item endpoints between edges of the same topic (and,
   for the few that cannot be fixed inside a topic, between any edges).
5. **Split.** MMRec's rule, per user over a random order of the user's interactions:
   fewer than 10 interactions give exactly one validation and one test interaction,
   otherwise ``m = int(0.2 n)`` go to evaluation, ``m // 2`` to validation and
   ``m - m // 2`` to test; the rest train.

Why this is written by hand: no library generates bipartite graphs with exact degree
totals, a minimum degree, no repeated pairs and topic-correlated content, so the
configuration-model matching above is implemented directly, vectorised in numpy.

The same preset and seed give the same arrays (and, through :func:`write_mmrec`, the
same file bytes) with the same numpy build. :func:`synthetic_dataset` writes a preset
once to an MMRec directory in a cache and loads it through
:func:`~mambarec_pyg.data.load_mmrec`, so downstream code sees exactly what it would
see with real files.
"""
from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
from torch_geometric.data import HeteroData

from .errors import DataError
from .mmrec import FEATURE_SUFFIX, UI, load_mmrec, split_labels, write_mmrec

#: Bumped whenever the generator's output changes; part of the cache manifest.
GENERATOR_VERSION = 1
MANIFEST = 'synthetic.json'
TOPIC_FILE = 'item_topic.npy'
MIN_DEGREE = 5


@dataclass(frozen=True)
class SyntheticPreset:
    """Sizes and generator settings of one synthetic dataset."""

    num_users: int
    num_items: int
    num_interactions: int
    image_dim: int = 4096
    text_dim: int = 384
    num_topics: int = 20
    #: dimension L of the latent item vectors both modalities are generated from.
    latent_dim: int = 16
    #: spread s of items around their topic's centre in latent space.
    item_spread: float = 0.5
    #: noise scales sigma_v, sigma_t of the image and text blocks.
    image_noise: float = 1.5
    text_noise: float = 0.6
    #: probability that an interaction goes to a random topic instead of a preferred.
    exploration: float = 0.1
    #: Pareto tail index of user activity (smaller = heavier tail).
    user_tail: float = 1.5
    #: Zipf exponent of item popularity within a topic.
    item_zipf: float = 0.9

    @property
    def density(self) -> float:
        return self.num_interactions / (self.num_users * self.num_items)


#: Built-in presets. ``tiny`` is for tests; ``baby``, ``sports`` and ``clothing`` have
#: exactly the users, items and interactions of the paper's Table 1 and the paper's
#: feature sizes (4096-d image, 384-d text).
PRESETS: Dict[str, SyntheticPreset] = {
    'tiny': SyntheticPreset(100, 60, 1000, image_dim=64, text_dim=32, num_topics=6),
    'baby': SyntheticPreset(19_445, 7_050, 160_792, num_topics=20),
    'sports': SyntheticPreset(35_598, 18_357, 296_337, num_topics=30),
    'clothing': SyntheticPreset(39_387, 23_033, 278_677, num_topics=40),
}


def _preset(preset: Union[str, SyntheticPreset]) -> SyntheticPreset:
    if isinstance(preset, SyntheticPreset):
        p = preset
    elif preset in PRESETS:
        p = PRESETS[preset]
    else:
        from ..utils import did_you_mean
        from .scaled import SCALED_PRESETS
        names = [*PRESETS, *SCALED_PRESETS]
        raise DataError(f'synthetic preset {preset!r} unknown'
                        f'{did_you_mean(str(preset), names)}; available: '
                        f"{', '.join(names)}")
    u, n, e = p.num_users, p.num_items, p.num_interactions
    if u < 1 or n < MIN_DEGREE + 1 or e < MIN_DEGREE * max(u, n):
        raise DataError(f'synthetic preset: {e} interactions cannot give each of {u} '
                        f'users and {n} items at least {MIN_DEGREE} (and at least '
                        f'{MIN_DEGREE + 1} items are needed)')
    if e > u * n // 2:
        raise DataError(f'synthetic preset: {e} interactions for {u} users x {n} '
                        f'items is too dense (at most half of all pairs)')
    if not 1 <= p.num_topics <= n:
        raise DataError(f'synthetic preset: num_topics={p.num_topics} must be in '
                        f'1..{n}')
    return p


def make_synthetic(preset: Union[str, SyntheticPreset] = 'tiny',
                   seed: int = 0) -> HeteroData:
    """Generate the synthetic dataset ``preset`` (a name in :data:`PRESETS` or a
    :class:`SyntheticPreset`) in memory.

    Returns the same structure as :func:`~mambarec_pyg.data.load_mmrec` (modalities
    ``('image', 'text')``) plus ``data['item'].topic``, the planted topic of each
    item. Edges of each split are sorted by user, then item.
    """
    p = _preset(preset)
    name = f'synthetic-{preset}-{seed}' if isinstance(preset, str) else (
        f'synthetic-custom-{seed}')
    rng = np.random.Generator(np.random.PCG64(seed))
    U, N, E, K = p.num_users, p.num_items, p.num_interactions, p.num_topics

    # 1. Topics: balanced sizes, randomly placed over the item ids.
    topic = rng.permutation(np.arange(N) % K)

    # 3. Degrees. Items: Zipf weights by random popularity rank within the topic.
    order = np.lexsort((rng.random(N), topic))
    rank = np.empty(N, dtype=np.int64)
    starts = np.searchsorted(topic[order], np.arange(K))
    rank[order] = np.arange(N) - starts[topic[order]]
    item_deg = _degrees(rng, (rank + 1.0)**-p.item_zipf, E, cap=max(MIN_DEGREE,
                                                                    min(U // 3, 2000)))
    user_w = 1.0 + rng.pareto(p.user_tail, U)
    user_deg = _degrees(rng, user_w, E, cap=max(MIN_DEGREE, min(N // 3, 250)))

    # 4. Preferences and matching.
    users, items = _match(rng, user_deg, item_deg, topic, K, p.exploration)
    # 5. Split, then a canonical order (user, item) within each split.
    labels = split_labels(users, U, rng)

    # 2. Features (last, so the interaction graph does not depend on feature sizes).
    image, text = _features(rng, topic, p)

    data = HeteroData()
    data.name = name
    data['user'].num_nodes = U
    data['item'].num_nodes = N
    data['item'].image = torch.from_numpy(image)
    data['item'].text = torch.from_numpy(text)
    data.modalities = ('image', 'text')
    key = users * N + items
    store = data[UI]
    for label, attr in ((0, 'edge_index'), (1, 'valid_edge_label_index'),
                        (2, 'test_edge_label_index')):
        sel = np.flatnonzero(labels == label)
        sel = sel[np.argsort(key[sel], kind='stable')]
        store[attr] = torch.from_numpy(np.stack([users[sel], items[sel]]))
    data.num_dropped_eval_users = {'valid': 0, 'test': 0}
    data['item'].topic = torch.from_numpy(topic.astype(np.int64))
    return data


# ---------------------------------------------------------------------------------
# Generator steps
# ---------------------------------------------------------------------------------
def _degrees(rng: np.random.Generator, weights: np.ndarray, total: int,
             cap: int) -> np.ndarray:
    """Degrees ``>= MIN_DEGREE`` and ``<= cap`` summing exactly to ``total``, the
    excess over the minimum spread multinomially in proportion to ``weights``."""
    n = weights.size
    deg = np.full(n, MIN_DEGREE, dtype=np.int64)
    remaining = total - MIN_DEGREE * n
    w = weights.astype(np.float64)
    while remaining > 0:
        deg += rng.multinomial(remaining, w / w.sum())
        over = deg > cap
        remaining = int((deg[over] - cap).sum())
        deg[over] = cap
        w = np.where(deg < cap, w, 0.0)
    return deg


def _match(rng: np.random.Generator, user_deg: np.ndarray, item_deg: np.ndarray,
           topic: np.ndarray, K: int, exploration: float):
    """Pair user slots with item slots topic by topic, without repeated pairs."""
    U, N, E = user_deg.size, item_deg.size, int(item_deg.sum())
    supply = np.bincount(topic, weights=item_deg, minlength=K).astype(np.int64)
    q = supply / supply.sum()

    # Each user: three topics drawn in proportion to supply, Dirichlet(0.5) weights.
    pref = rng.choice(K, size=(U, 3), p=q)
    w = rng.gamma(0.5, size=(U, 3)) + 1e-12
    cw = np.cumsum(w / w.sum(1, keepdims=True), axis=1)
    slot_user = np.repeat(np.arange(U), user_deg)
    which = (rng.random(E)[:, None] > cw[slot_user]).sum(1).clip(max=2)
    slot_topic = pref[slot_user, which]
    explore = rng.random(E) < exploration
    slot_topic[explore] = rng.choice(K, size=int(explore.sum()), p=q)

    # Make the demand per topic equal the supply: surplus slots of over-asked topics
    # (a random subset) move to under-asked ones.
    order = np.lexsort((rng.random(E), slot_topic))
    sorted_topic = slot_topic[order]
    pos = np.arange(E) - np.searchsorted(sorted_topic, sorted_topic)
    surplus = order[pos >= supply[sorted_topic]]
    demand = np.bincount(slot_topic, minlength=K)
    deficit = np.maximum(supply - demand, 0)
    slot_topic[surplus] = rng.permutation(np.repeat(np.arange(K), deficit))

    # Pair at random within each topic block.
    u_order = np.lexsort((rng.random(E), slot_topic))
    users = slot_user[u_order]
    edge_topic = slot_topic[u_order]
    item_slots = np.repeat(np.arange(N), item_deg)
    i_order = np.lexsort((rng.random(E), topic[item_slots]))
    items = item_slots[i_order]

    _remove_repeats(rng, users, items, edge_topic, N, K)
    return users, items


def _remove_repeats(rng: np.random.Generator, users: np.ndarray, items: np.ndarray,
                    edge_topic: np.ndarray, N: int, K: int,
                    local_rounds: int = 40, max_rounds: int = 400) -> None:
    """Swap item endpoints between edges until no ``(user, item)`` pair repeats.

    Every swap exchanges the items of two edges, so user and item degrees are kept.
    Partners are drawn from the same topic block (``edge_topic`` is sorted), then,
    after ``local_rounds`` rounds, from all edges. A swap is accepted only if neither
    new pair already exists and the two edges are not touched by another swap of the
    same round.
    """
    E = users.size
    block_start = np.searchsorted(edge_topic, np.arange(K))
    block_size = np.bincount(edge_topic, minlength=K)
    for rnd in range(max_rounds):
        key = users * N + items
        order = np.argsort(key, kind='stable')
        sorted_key = key[order]
        repeat = np.zeros(E, dtype=bool)
        repeat[order[1:][sorted_key[1:] == sorted_key[:-1]]] = True
        bad = np.flatnonzero(repeat)
        if bad.size == 0:
            return
        bad = rng.permutation(bad)
        if rnd < local_rounds:
            t = edge_topic[bad]
            partner = block_start[t] + (rng.random(bad.size) * block_size[t]).astype(
                np.int64)
        else:
            partner = rng.integers(0, E, size=bad.size)
        # New pairs (u_bad, i_partner) and (u_partner, i_bad) must not exist yet.
        ok = ~repeat[partner] & (items[partner] != items[bad])
        ok &= ~_contains(sorted_key, users[bad] * N + items[partner])
        ok &= ~_contains(sorted_key, users[partner] * N + items[bad])
        bad, partner = bad[ok], partner[ok]
        _, first = np.unique(partner, return_index=True)
        bad, partner = bad[first], partner[first]
        items[bad], items[partner] = items[partner], items[bad].copy()
    raise RuntimeError('synthetic data: could not remove repeated (user, item) pairs; '
                       'the preset is too dense')


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(sorted_keys, keys).clip(max=sorted_keys.size - 1)
    return sorted_keys[pos] == keys


def _features(rng: np.random.Generator, topic: np.ndarray, p: SyntheticPreset):
    N, L = topic.size, p.latent_dim
    f32 = np.float32
    centres = rng.standard_normal((p.num_topics, L), dtype=f32)
    z = centres[topic] + f32(p.item_spread) * rng.standard_normal((N, L), dtype=f32)
    w_image = rng.standard_normal((L, p.image_dim), dtype=f32) / f32(np.sqrt(L))
    w_text = rng.standard_normal((L, p.text_dim), dtype=f32) / f32(np.sqrt(L))

    image = np.empty((N, p.image_dim), dtype=f32)
    rng.standard_normal(out=image, dtype=f32)
    text = np.empty((N, p.text_dim), dtype=f32)
    rng.standard_normal(out=text, dtype=f32)
    chunk = 2048  # rows per block, to bound the temporaries
    for s in range(0, N, chunk):
        block = image[s:s + chunk]
        block *= f32(p.image_noise)
        block += z[s:s + chunk] @ w_image
        np.maximum(block, 0, out=block)
    text *= f32(p.text_noise)
    text += z @ w_text
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    return image, text


# ---------------------------------------------------------------------------------
# Cached MMRec files
# ---------------------------------------------------------------------------------
def default_cache_root() -> Path:
    """Where :func:`synthetic_dataset` keeps its files: ``$MAMBAREC_CACHE/synthetic``,
    else ``$XDG_CACHE_HOME/mambarec_pyg/synthetic``, else
    ``~/.cache/mambarec_pyg/synthetic``."""
    if os.environ.get('MAMBAREC_CACHE'):
        return Path(os.environ['MAMBAREC_CACHE']) / 'synthetic'
    base = os.environ.get('XDG_CACHE_HOME') or Path.home() / '.cache'
    return Path(base) / 'mambarec_pyg' / 'synthetic'


def write_synthetic(preset: str = 'tiny', seed: int = 0,
                    root: Union[str, os.PathLike, None] = None,
                    overwrite: bool = False) -> Path:
    """Generate ``preset`` and write it as the MMRec dataset
    ``root/synthetic-<preset>-<seed>/``, with the planted topics (``item_topic.npy``)
    and a manifest (``synthetic.json``) in the same atomic step. Returns the directory.
    """
    p = _preset(preset)
    root = Path(root) if root is not None else default_cache_root()
    data = make_synthetic(preset, seed)
    return write_mmrec(data, root, data.name, overwrite=overwrite, extra_files={
        TOPIC_FILE: data['item'].topic.numpy(),
        MANIFEST: json.dumps(_manifest(preset, seed, p), indent=2) + '\n',
    })


def synthetic_dataset(preset: str = 'tiny', seed: int = 0,
                      root: Union[str, os.PathLike, None] = None,
                      modalities: Optional[Sequence[str]] = None,
                      feature_dtype: str = 'float32',
                      verbose: bool = False, image_dim: int = 0,
                      text_dim: int = 0) -> HeteroData:
    """The synthetic dataset ``preset``, read through
    :func:`~mambarec_pyg.data.load_mmrec` from ``root/synthetic-<preset>-<seed>/``.

    The files are generated only when that directory is not already complete (its
    manifest matches this preset, seed and generator version, and every file is
    present with the expected shape); ``root`` defaults to
    :func:`default_cache_root`. ``modalities``, ``verbose`` and ``feature_dtype``
    are passed to :func:`~mambarec_pyg.data.load_mmrec`. The result carries
    ``data['item'].topic``.

    The large presets (``clothing-x10``, ``clothing-x100``:
    :mod:`mambarec_pyg.data.scaled`) are generated in bounded memory, with the
    feature widths ``image_dim`` / ``text_dim`` (0: the preset's).
    """
    from .scaled import SCALED_PRESETS, is_scaled_complete, scaled_preset, write_scaled
    root = Path(root) if root is not None else default_cache_root()
    if preset in SCALED_PRESETS:
        sp = scaled_preset(preset, image_dim, text_dim)
        name = f'synthetic-{preset}-{seed}-{sp.image_dim}x{sp.text_dim}'
        complete = lambda: is_scaled_complete(root / name, sp, seed)  # noqa: E731
        write = lambda overwrite: write_scaled(sp, root, name, seed,  # noqa: E731
                                               overwrite=overwrite)
    else:
        if image_dim or text_dim:
            raise DataError(f'data.synthetic_image_dim / synthetic_text_dim: only '
                            f"the large presets ({', '.join(SCALED_PRESETS)}) take "
                            f'feature widths; {preset!r} has fixed ones')
        p = _preset(preset)
        name = f'synthetic-{preset}-{seed}'
        complete = lambda: _is_complete(root / name, preset, seed, p)  # noqa: E731
        write = lambda overwrite: write_synthetic(  # noqa: E731
            preset, seed, root, overwrite=overwrite)
    directory = root / name
    if not complete():
        try:
            write(directory.exists())
        except FileExistsError:  # written concurrently by another process
            if not complete():
                raise
    data = load_mmrec(root, name, modalities=modalities, verbose=verbose,
                      feature_dtype=feature_dtype)
    data['item'].topic = torch.from_numpy(
        np.load(directory / TOPIC_FILE, allow_pickle=False).astype(np.int64))
    return data


def _manifest(preset: str, seed: int, p: SyntheticPreset) -> dict:
    return {'generator': 'mambarec_pyg.data.synthetic', 'version': GENERATOR_VERSION,
            'preset': preset, 'seed': seed, 'settings': asdict(p)}


def _is_complete(directory: Path, preset: str, seed: int, p: SyntheticPreset) -> bool:
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    if manifest != json.loads(json.dumps(_manifest(preset, seed, p))):
        return False
    inter = directory / f'{directory.name}.inter'
    if not inter.is_file() or inter.stat().st_size == 0:
        return False
    expected = {f'image{FEATURE_SUFFIX}': (p.num_items, p.image_dim),
                f'text{FEATURE_SUFFIX}': (p.num_items, p.text_dim),
                TOPIC_FILE: (p.num_items, )}
    for file, shape in expected.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('ignore')
                array = np.load(directory / file, mmap_mode='r', allow_pickle=False)
        except (OSError, ValueError, EOFError):
            return False
        if array.shape != shape:
            return False
    return True
