r"""Figures 7 and 8 of the MambaRec paper: the distribution of item embeddings,
MambaRec against VBPR.

For every dataset and model (default ``mambarec`` and ``vbpr``; ``--models`` to
choose), the model is trained (one cell per dataset and model, first seed) and its
final item embeddings are read from the best checkpoint (``embed()`` in eval mode).
Up to ``max_items`` items (a seeded sample; default 3000) are then:

1. reduced to 2-D with t-SNE (:class:`sklearn.manifold.TSNE`, PCA initialisation,
   seeded; perplexity :math:`\min(30, (n - 1) / 3)`);
2. centred and normalised onto the unit circle, :math:`z_i / \|z_i\|`, and their
   density estimated with a Gaussian kernel (:class:`scipy.stats.gaussian_kde`) in
   the plane and over the angle :math:`\theta_i = \operatorname{atan2}(y_i, x_i)`
   (wrapped: the sample is repeated at :math:`\theta \pm 2\pi` and the estimate
   renormalised on :math:`[-\pi, \pi]`; bandwidth: Scott's rule on the angles'
   circular spread).

The paper reads a uniform, wide, smooth density as a more discriminative
representation. Numbers for the same reading (``embeddings.md``, ``.csv``,
``.json``):

* uniformity (Wang and Isola, ICML 2020) of the L2-normalised embeddings,
  :math:`\log \frac{1}{n(n-1)} \sum_{i \ne j} e^{-2 \|x_i - x_j\|^2}` -- in the
  model's :math:`d` dimensions and on the 2-D circle (lower: more uniform; the
  uniform distribution on the circle gives
  :math:`\log(e^{-4} I_0(4)) \approx -1.58`);
* the Kullback-Leibler divergence of the angle density from the uniform one
  (0: uniform);
* on synthetic data, whose items have planted topics, the cosine silhouette score of
  the topics among the :math:`d`-dimensional embeddings (not in the paper: how well
  the content structure is kept).

Figures: ``embeddings_<dataset>.png`` (the paper's Figure 7 is Baby, Figure 8 Sports):
per model, the t-SNE map (coloured by the planted topic on synthetic data), the
density of the normalised points, and the density of the angles.
"""
from __future__ import annotations

import math
import sys
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .presets import Preset, resolve_row
from .report import markdown_table, write_outputs
from .runner import (Cell, CellResult, Collected, Experiment, ExperimentResult, Runner,
                     Setup, note)

__all__ = ['Embeddings', 'uniformity', 'angle_density', 'tsne_2d', 'topic_silhouette',
           'DEFAULT_MODELS', 'FALLBACKS']

#: the paper's comparison.
DEFAULT_MODELS = ('mambarec', 'vbpr')
#: tried in order when VBPR is not registered.
FALLBACKS = ('vbpr', 'mmgcn', 'grcn', 'slmrec', 'freedom', 'mgcn', 'lgmrec',
             'lightgcn', 'bpr')
_GRID = 256
#: the density colour map of each dataset colour (plots.DATASET_COLORS).
_CMAPS = {'#d62728': 'Reds', '#1f77b4': 'Blues', '#2ca02c': 'Greens',
          '#ff7f0e': 'Oranges', '#9467bd': 'Purples'}


def uniformity(x: np.ndarray, t: float = 2.0) -> float:
    r""":math:`\log` of the mean of :math:`e^{-t\|x_i - x_j\|^2}` over pairs
    :math:`i \ne j` of the L2-normalised rows of ``x``."""
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[0]
    if n < 2:
        return float('nan')
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sq = np.clip(2.0 - 2.0 * (x @ x.T), 0.0, None)
    e = np.exp(-t * sq)
    total = e.sum() - np.trace(e)
    return float(np.log(total / (n * (n - 1))))


def angle_density(points: np.ndarray, grid: int = _GRID
                  ) -> Tuple[np.ndarray, np.ndarray, float]:
    r"""``(theta [grid], density [grid], KL from uniform)`` of the angles of the 2-D
    ``points``: a Gaussian KDE with wrap-around (see the module docstring)."""
    from scipy.stats import gaussian_kde
    theta = np.arctan2(points[:, 1], points[:, 0])
    xs = np.linspace(-np.pi, np.pi, grid)
    if theta.size < 2 or np.ptp(theta) == 0:
        return xs, np.full(grid, np.nan), float('nan')
    # Scott's bandwidth for the angles themselves (the circular spread where the
    # angles are concentrated), expressed as a factor of the wrapped sample's spread
    resultant = np.hypot(np.cos(theta).mean(), np.sin(theta).mean())
    spread = min(theta.std(), np.sqrt(-2.0 * np.log(max(resultant, 1e-12))))
    h = max(spread, 1e-3) * theta.size ** (-1.0 / 5.0)
    wrapped = np.concatenate([theta - 2 * np.pi, theta, theta + 2 * np.pi])
    kde = gaussian_kde(wrapped, bw_method=h / wrapped.std())
    dens = 3.0 * kde(xs)
    dens /= _trapezoid(dens, xs)
    uniform = 1.0 / (2 * np.pi)
    safe = np.maximum(dens, 1e-300)
    kl = float(_trapezoid(safe * np.log(safe / uniform), xs))
    return xs, dens, max(kl, 0.0)


def topic_silhouette(x: np.ndarray, topics: np.ndarray) -> float:
    """The cosine silhouette score of ``topics`` (labels; -1: unknown) among the
    rows of ``x``; NaN without at least two topics."""
    from sklearn.metrics import silhouette_score
    known = topics >= 0
    if known.sum() < 3 or len(np.unique(topics[known])) < 2 or \
            len(np.unique(topics[known])) >= known.sum():
        return float('nan')
    return float(silhouette_score(x[known], topics[known], metric='cosine'))


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    fn = getattr(np, 'trapezoid', None) or getattr(np, 'trapz')  # NumPy < 2: trapz
    return float(fn(y, x))


def tsne_2d(x: np.ndarray, seed: int) -> np.ndarray:
    """2-D t-SNE of the rows of ``x`` (PCA initialisation, seeded)."""
    from sklearn.manifold import TSNE
    n = x.shape[0]
    perplexity = float(max(2.0, min(30.0, (n - 1) / 3.0)))
    return TSNE(n_components=2, init='pca', random_state=seed, perplexity=perplexity
                ).fit_transform(np.asarray(x, dtype=np.float64))


class Embeddings(Experiment):
    name = 'embeddings'
    title = 'distribution of item embeddings, MambaRec against VBPR (Figures 7-8)'
    paper_ref = 'Figures 7 and 8'
    default_datasets = ('baby', 'sports')
    needs_sklearn = True

    @classmethod
    def add_arguments(cls, group) -> None:
        from ..cli.common import _arg_type
        group.add_argument('--max-items', type=_arg_type(int), default=3000,
                           metavar='N', help='items in the t-SNE (a seeded sample; '
                           'default 3000)')

    def rows(self, setup: Setup) -> List[Preset]:
        cached = getattr(self, '_rows', None)
        if cached is not None:
            return cached
        if setup.models:
            names = list(dict.fromkeys(setup.models))
        else:
            names = _default_models(setup)
        self._rows = [resolve_row(n) for n in names]
        return self._rows

    def plan(self, setup: Setup) -> List[Cell]:
        seed = setup.seeds[0]
        cells = []
        for ds in setup.datasets:
            for p in self.rows(setup):
                cfg = p.apply(setup.base_config(ds, seed))
                cells.append(Cell(f'{ds.label}/{p.name}/seed-{seed}', ds, p.name, seed,
                                  cfg, {'model': p.model}))
        return cells

    # -- analysis -----------------------------------------------------------------
    @staticmethod
    def _cache(res: CellResult) -> str:
        """Where ``res``'s t-SNE points are kept, relative to the output."""
        return f'embeddings/{res.cell.dataset.label}__{res.cell.row}.npz'

    @staticmethod
    def _stamp(setup: Setup, res: CellResult) -> np.ndarray:
        """What the points were computed from: the checkpoint's time, the number
        of items and the seed (the cache is stale when any differs)."""
        max_items = int(setup.options.get('max_items') or 3000)
        best = res.directory / 'best.pt'
        return np.array([best.stat().st_mtime_ns, max_items, res.cell.seed],
                        dtype=np.int64)

    def _read_points(self, setup: Setup, collected: Collected, res: CellResult
                     ) -> Dict[str, np.ndarray]:
        """The t-SNE points :meth:`collect` kept for ``res`` (read only).

        Raises:
            CollectedFileMissing: the file is missing or was made from another
                checkpoint or other settings.
        """
        pts = collected.npz(self._cache(res))
        if 'stamp' not in pts or not np.array_equal(pts['stamp'],
                                                    self._stamp(setup, res)):
            raise collected.missing(collected.root / self._cache(res),
                                    'was computed from another checkpoint or with '
                                    'other settings')
        return pts

    def _points(self, setup: Setup, runner: Runner, res: CellResult
                ) -> Dict[str, np.ndarray]:
        """t-SNE of ``res``'s item embeddings, cached beside the experiment's
        outputs (recomputed when the checkpoint or the settings change)."""
        from ..train.experiment import load_run
        max_items = int(setup.options.get('max_items') or 3000)
        seed = res.cell.seed
        best = res.directory / 'best.pt'
        cache = setup.output / self._cache(res)
        stamp = self._stamp(setup, res)
        if cache.is_file():
            with np.load(cache) as z:
                if 'stamp' in z.files and np.array_equal(z['stamp'], stamp):
                    return {k: z[k] for k in z.files}
        data = runner.data(res.cell.config.data)
        model, data, _ = load_run(best, device=res.cell.config.train.device, data=data)
        _, item = model.eval_embeddings()
        item = item.detach().cpu().double().numpy()
        n = item.shape[0]
        rng = np.random.default_rng(seed)
        idx = np.sort(rng.choice(n, size=min(n, max_items), replace=False))
        x = item[idx]
        runner.say(f'embeddings: t-SNE of {idx.size} {res.cell.row} item embeddings '
                   f'on {res.cell.dataset.label}')
        z2 = tsne_2d(x, seed)
        topic = getattr(data['item'], 'topic', None)
        topics = (topic.cpu().numpy()[idx] if topic is not None
                  else np.full(idx.size, -1))
        out = {'items': idx, 'tsne': z2, 'stamp': stamp,
               'uniformity_d': np.array(uniformity(x)), 'topic': topics,
               'silhouette': np.array(topic_silhouette(x, topics))}
        from ..io import atomic_path
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as tmp:
            with open(tmp, 'wb') as f:
                np.savez(f, **out)
        return out

    def collect(self, setup: Setup, results: List[CellResult], runner: Runner) -> None:
        """The t-SNE of every finished run's item embeddings, cached in
        ``OUTPUT/embeddings/`` (the report reads the caches)."""
        super().collect(setup, results, runner)
        for res in results:
            if res.ok:
                self._points(setup, runner, res)

    def report(self, setup: Setup, results: List[CellResult],
               collected: Collected) -> ExperimentResult:
        caveat = note(setup)
        md = ['# Figures 7-8: item embeddings (t-SNE, density of the normalised '
              'embeddings)', '',
              'uniformity: log of the mean of exp(-2 ‖x_i − x_j‖²) over pairs of '
              'L2-normalised embeddings (lower = more uniform; Wang and Isola, 2020; '
              'the uniform circle gives −1.58), in the model\'s d dimensions and on '
              'the 2-D t-SNE circle; angle KL: divergence of the angle density on the '
              'circle from the uniform one (0 = uniform); topic silhouette (synthetic '
              'data only): cosine silhouette of the planted item topics in d '
              'dimensions (higher = the topics are better separated).', '']
        if caveat:
            md += [f'> **Note.** {caveat}.', '']
        body, records = [], []
        table: Dict[str, Any] = {'experiment': self.name, 'paper': self.paper_ref,
                                 'note': caveat, 'seed': setup.seeds[0],
                                 'max_items': int(setup.options.get('max_items') or
                                                  3000), 'datasets': {}}
        analysed: Dict[str, List[Tuple[str, Dict[str, np.ndarray], CellResult]]] = {}
        for res in results:
            if not res.ok:
                continue
            pts = self._read_points(setup, collected, res)
            circle = _normalise(pts['tsne'])
            _, _, kl = angle_density(circle)
            u2 = uniformity(circle)
            entry = {'row': res.cell.row, 'model': res.cell.labels.get('model'),
                     'run': str(res.directory.relative_to(setup.output)),
                     'items': int(pts['items'].size),
                     'test_recall@20': res.test.get('recall@20'),
                     'uniformity_d': float(pts['uniformity_d']),
                     'uniformity_2d': u2, 'angle_kl_from_uniform': kl,
                     'topic_silhouette': _finite(pts.get('silhouette'))}
            table['datasets'].setdefault(res.cell.dataset.label, []).append(entry)
            records.append({'dataset': res.cell.dataset.label, **entry})
            body.append([res.cell.dataset.label, res.cell.row,
                         _f(entry['test_recall@20']), str(entry['items']),
                         _f(entry['uniformity_d']), _f(u2), _f(kl),
                         _f(entry['topic_silhouette'])])
            analysed.setdefault(res.cell.dataset.label, []).append(
                (res.cell.row, pts, res))
        md += [markdown_table(['dataset', 'model', 'test R@20', 'items',
                               'uniformity (d)', 'uniformity (2-D)', 'angle KL',
                               'topic silhouette'], body, 'llrrrrrr'), '']
        files = write_outputs(setup.output, self.name, '\n'.join(md), records, table)
        if setup.figures:
            for i, ds in enumerate(setup.datasets):
                if ds.label in analysed:
                    files[f'figure_{ds.label}'] = self._figure(setup, ds, i,
                                                               analysed[ds.label])
        return ExperimentResult(self.name, 'complete', results, files, table)

    def _figure(self, setup: Setup, ds, index: int, entries) -> str:
        from scipy.stats import gaussian_kde

        from .plots import dataset_color, new_figure, save, title
        fig, axes = new_figure(len(entries), 3, panel=(3.3, 3.1))
        c = dataset_color(ds.label, index)
        for (row, pts, res), ax in zip(entries, axes):
            z = pts['tsne']
            topic = pts['topic']
            if (topic >= 0).any():
                ax[0].scatter(z[:, 0], z[:, 1], c=topic, cmap='tab20', s=6,
                              linewidths=0)
                ax[0].set_title(f'{row}: t-SNE (colour: topic)', fontsize=9)
            else:
                ax[0].scatter(z[:, 0], z[:, 1], color=c, s=4, alpha=0.6, linewidths=0)
                ax[0].set_title(f'{row}: t-SNE', fontsize=9)
            ax[0].set_xticks([])
            ax[0].set_yticks([])
            circle = _normalise(z)
            g = np.linspace(-1.3, 1.3, 120)
            gx, gy = np.meshgrid(g, g)
            try:
                kde = gaussian_kde(circle.T)
                dens = kde(np.vstack([gx.ravel(), gy.ravel()])).reshape(gx.shape)
                ax[1].imshow(dens, extent=(-1.3, 1.3, -1.3, 1.3), origin='lower',
                             cmap=_CMAPS.get(c, 'Greys'))
            except (np.linalg.LinAlgError, ValueError):
                ax[1].scatter(circle[:, 0], circle[:, 1], color=c, s=4)
            t = np.linspace(0, 2 * np.pi, 200)
            ax[1].plot(np.cos(t), np.sin(t), color='black', linewidth=0.5)
            ax[1].set_aspect('equal')
            ax[1].set_xticks([])
            ax[1].set_yticks([])
            ax[1].set_title('density of normalised points', fontsize=9)
            xs, dens, kl = angle_density(circle)
            ax[2].fill_between(xs, dens, color=c, alpha=0.35)
            ax[2].plot(xs, dens, color=c)
            ax[2].axhline(1 / (2 * np.pi), color='gray', linestyle=':', linewidth=1)
            ax[2].set_xlim(-np.pi, np.pi)
            ax[2].set_xlabel('angle')
            ax[2].set_title(f'angle density (KL {kl:.3f})', fontsize=9)
        title(fig, f'{ds.label}: item embeddings' + (' (synthetic data)' if ds.synthetic
                                                      else ''), setup.quick)
        return save(fig, setup.output / f'embeddings_{ds.label}.png')


def _normalise(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    z = z - z.mean(axis=0, keepdims=True)
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def _finite(x) -> Optional[float]:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _f(x: Optional[float]) -> str:
    return '–' if x is None or not math.isfinite(x) else f'{x:.4f}'


def _default_models(setup: Setup) -> List[str]:
    from ..models.registry import list_models
    registered = list_models()
    names = [m for m in DEFAULT_MODELS if m in registered]
    if 'vbpr' not in registered:
        other = next((m for m in FALLBACKS if m in registered and m not in names), None)
        message = ("embeddings: model 'vbpr' (the paper's comparison) is not "
                   'registered; ' + (f"comparing MambaRec with {other!r} instead"
                                     if other else 'showing MambaRec alone')
                   + ' (choose with --models)')
        if not setup.quiet:
            print(message, file=sys.stderr)
        if other:
            names.append(other)
    return names
