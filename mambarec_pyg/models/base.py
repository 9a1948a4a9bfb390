r"""The interface every model implements: :class:`Recommender`.

A recommender is a :class:`torch.nn.Module` built from the data and its own config
dataclass, with a few verbs in PyG's idiom (compare
:class:`torch_geometric.nn.models.LightGCN`: ``get_embedding``, ``recommend``,
``recommendation_loss``):

* :meth:`Recommender.embed` -- final ``(user [U, d], item [N, d])`` embeddings in the
  current mode; the score of a pair is their inner product. Evaluation and serving
  call it once, in eval mode, under :func:`torch.no_grad`.
* :meth:`Recommender.loss` -- the training loss of one
  :class:`~mambarec_pyg.data.sampling.BPRBatch` as a dict of named 0-dim tensors with
  ``'total'`` (what is backpropagated); the trainer logs every part it returns.
* :meth:`Recommender.on_epoch_start` -- a hook before each training epoch (a warm-up,
  FREEDOM's edge pruning); it may return values to log for the epoch.
* :meth:`Recommender.score`, :meth:`Recommender.recommend` -- serving. Serving
  calls compute in eval mode without changing the module (not even its mode, see
  :func:`~mambarec_pyg.utils.eval_view`), so several threads may serve from one
  model at once, also while it is in training mode; they must not run while it is
  being trained.

**A loss that does not depend on the number of processes.** Under ``torchrun``
(:mod:`mambarec_pyg.train.distributed`) every process holds the whole model and
receives its contiguous slice of each global batch (``batch.shard`` set; ``None`` on
one process); the gradients are averaged over the processes. :meth:`Recommender.loss`
must then give every process a value whose mean over the processes is the global
batch's loss, and likewise for the gradient. Write it with the batch's reductions
(:class:`~mambarec_pyg.data.sampling.BPRBatch`):

* a mean or sum over the triples -> :meth:`batch.mean(values)
  <mambarec_pyg.data.sampling.BPRBatch.mean>` / :meth:`batch.sum(values)
  <mambarec_pyg.data.sampling.BPRBatch.sum>` of the per-triple values (``bpr_loss``
  and the regularisers of :mod:`mambarec_pyg.nn.losses` take ``batch`` for this);
  divide by :attr:`batch.nominal_size <mambarec_pyg.data.sampling.BPRBatch.nominal_size>`
  or :attr:`batch.num_global <mambarec_pyg.data.sampling.BPRBatch.num_global>`, never
  by the rows in hand;
* a term that couples the triples -- in-batch InfoNCE, MMD, a norm or any nonlinear
  function of a sum over the batch, a term over the batch's distinct users -- is
  computed on :meth:`batch.gather(rows) <mambarec_pyg.data.sampling.BPRBatch.gather>`:
  the rows of the whole global batch, in order, on every process, with gradients
  flowing back to each process's rows;
* random numbers drawn per triple: draw them for :attr:`batch.num_global` rows
  (the same draws on every process) and keep :meth:`batch.local(draws)
  <mambarec_pyg.data.sampling.BPRBatch.local>`. Random numbers for whole tables
  (dropout on all items, sampled edges, Gumbel noise) need nothing: every process
  draws the same sequence from the same seed, so never draw a number whose count
  depends on the process's rows (it would desynchronise the processes' generators);
* a process may hold **no** triple (a last batch shorter than the number of
  processes): every reduction above handles it, ``values.mean()`` would not;
* every process must make the same collective calls in the same order: decide
  whether to gather from the configuration, not from the data.

A term that reads no batch row (a penalty on whole tables) is written as usual.
With ``batch.shard is None`` the reductions are the plain ones (``values.mean()``,
``values.sum()``, the identity), so single-process results do not change.
``tests/train/test_distributed.py`` checks every registered model: one epoch on 2
and 3 processes gives the weights of one process.

Class attributes say what the model needs: :attr:`~Recommender.min_modalities`
(item feature tables), :meth:`~Recommender.graph_transforms` (the graphs it
propagates on, put on the data by :mod:`mambarec_pyg.data.transforms`) and
:attr:`~Recommender.protocol` (its training defaults, e.g. MMRec's learning-rate
decay). Register a model under a name with :func:`~mambarec_pyg.models.register`;
``model.name`` in the config then picks it (:mod:`mambarec_pyg.models.registry`).
"""
from __future__ import annotations

from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..config import ConfigError, ModelConfig
from ..data.errors import DataError
from ..data.index import UI, training_index
from ..data.sampling import BPRBatch
from ..data.transforms import GraphTransform, apply_transforms
from ..nn.sparse import SparseGraphs, as_csr, edge_matrix, user_item_matrices
from ..ranking import rank_items
from ..utils import eval_view

__all__ = ['Recommender', 'check_data', 'SparseGraphs', 'user_item_matrices',
           'edge_matrix', 'as_csr', 'feature_table']


def feature_table(x, dtype: torch.dtype, trainable: bool = True) -> torch.nn.Parameter:
    """A raw feature table ``x`` as a model parameter in ``dtype``: a trainable
    copy, or (``trainable=False``) a frozen parameter that shares ``x``'s memory
    when ``x`` already has that dtype on the CPU (no gradient, no optimizer state,
    no second copy of the table)."""
    x = x.detach().cpu().to(dtype)
    if trainable:
        return torch.nn.Parameter(x.clone())
    return torch.nn.Parameter(x, requires_grad=False)


def check_data(data, who: str = 'model') -> Tuple[int, int, Tuple[str, ...]]:
    """``(U, N, modalities)`` of ``data``; :class:`DataError` naming what is missing
    or malformed."""
    try:
        num_users = int(data['user'].num_nodes)
        num_items = int(data['item'].num_nodes)
    except (KeyError, AttributeError, TypeError):
        raise DataError(f"{who}: expected data['user'].num_nodes and "
                        f"data['item'].num_nodes") from None
    if UI not in getattr(data, 'edge_types', ()) or 'edge_index' not in data[UI]:
        raise DataError(f"{who}: expected the training interactions "
                        f"data['user', 'interacts', 'item'].edge_index")
    modalities = tuple(getattr(data, 'modalities', None) or ())
    for m in modalities:
        if not m.isidentifier():
            raise DataError(f'{who}: modality name {m!r} must be a Python identifier')
        x = data['item'].get(m) if hasattr(data['item'], 'get') else None
        if not isinstance(x, Tensor) or x.dim() != 2 or x.size(0) != num_items:
            shape = tuple(x.shape) if isinstance(x, Tensor) else None
            raise DataError(f"{who}: data['item'][{m!r}]: expected a tensor "
                            f"[{num_items}, D], got {shape or type(x).__name__}")
        if not x.is_floating_point():
            raise DataError(f"{who}: data['item'][{m!r}]: expected floats, got "
                            f"{x.dtype}")
    return num_users, num_items, modalities


class Recommender(torch.nn.Module):
    r"""Base class of every model (see the module docstring for the interface).

    Args:
        data (HeteroData): ``data['user'].num_nodes``, ``data['item'].num_nodes``,
            the training interactions ``data['user', 'interacts', 'item']
            .edge_index``, ``data.modalities`` with one ``[N, D_m]`` feature tensor
            ``data['item'][m]`` each, and the graphs of :meth:`graph_transforms`
            (computed here when missing: in memory, or cached under
            ``data.processed_dir`` when the loader set it).
        config (ModelConfig, optional): the model's config dataclass (default: its
            defaults).

    Subclasses call ``super().__init__(data, config)`` first; it checks the data and
    the config and sets :attr:`config`, :attr:`num_users`, :attr:`num_items`,
    :attr:`modalities` and the training items excluded by :meth:`recommend`. A model
    that propagates on graphs then reads them from ``self.prepare(data, config)``,
    which computes only the missing ones.
    """

    #: the registered name (set by :func:`~mambarec_pyg.models.register`).
    name: ClassVar[str] = ''
    #: the model's config dataclass.
    config_class: ClassVar[type] = ModelConfig
    #: the fewest and most item modalities (feature tables) the model works with.
    min_modalities: ClassVar[int] = 0
    max_modalities: ClassVar[Optional[int]] = None
    #: the model's training protocol: defaults for the
    #: :class:`~mambarec_pyg.config.TrainConfig` fields left ``None``.
    protocol: ClassVar[Dict[str, Any]] = {'lr_decay': 1.0, 'weight_decay': 0.0}
    #: the paper (title, venue) -- listed by ``mambarec models``.
    reference: ClassVar[str] = ''
    #: whether training-mode computations draw random numbers (dropout, sampled
    #: noise or edges), so that two devices give different values in training mode.
    stochastic_training: ClassVar[bool] = False
    #: whether every training step's loss reaches every trainable parameter. A model
    #: that leaves some without a gradient in some steps (LATTICE rebuilds its
    #: learned graph, with gradients to the features, in the first step of an epoch
    #: only) sets it to ``False``: ``DistributedDataParallel`` must then look for
    #: unused parameters (:class:`~mambarec_pyg.train.distributed.DistributedStep`
    #: with ``sync='ddp'``).
    uses_all_parameters: ClassVar[bool] = True

    def __init__(self, data, config: Optional[ModelConfig] = None) -> None:
        super().__init__()
        if config is None:
            config = self.config_class()
        if not isinstance(config, self.config_class):
            raise ConfigError(f'{type(self).__name__}: expected config to be a '
                              f'{self.config_class.__name__}, got '
                              f'{type(config).__name__}')
        self.config = config
        who = type(self).__name__
        self.num_users, self.num_items, self.modalities = check_data(data, who)
        self.check_modalities(self.modalities)
        index = training_index(data)
        self.register_buffer('train_rowptr', index.user_items.rowptr.clone(),
                             persistent=False)
        self.register_buffer('train_items', index.user_items.col.clone(),
                             persistent=False)

    # -- what the model needs --------------------------------------------------------
    @classmethod
    def check_modalities(cls, modalities: Sequence[str]) -> None:
        """Raise :class:`DataError` unless the model works with ``modalities``."""
        n = len(modalities)
        if n < cls.min_modalities:
            need = ('at least one item feature table' if cls.min_modalities == 1 else
                    f'at least {cls.min_modalities} item feature tables')
            raise DataError(f'model {cls.name or cls.__name__!r} needs {need} '
                            f"(data['item'][m] for m in data.modalities); the data "
                            f"has {n}" + (f' ({", ".join(modalities)})' if n else ''))
        if cls.max_modalities is not None and n > cls.max_modalities:
            raise DataError(f'model {cls.name or cls.__name__!r} works with at most '
                            f'{cls.max_modalities} item feature tables; the data has '
                            f'{n} ({", ".join(modalities)}); choose with '
                            f'--data.modalities')

    @classmethod
    def graph_transforms(cls, config: ModelConfig) -> List[GraphTransform]:
        """The transforms that put this model's graphs on the data (default none)."""
        return []

    @classmethod
    def prepare(cls, data, config: Optional[ModelConfig] = None,
                processed_dir=None):
        """``data`` with the graphs of :meth:`graph_transforms` (computed where
        missing, cached in ``processed_dir`` or ``data.processed_dir``)."""
        config = config if config is not None else cls.config_class()
        return apply_transforms(data, cls.graph_transforms(config), processed_dir)

    # -- the interface ---------------------------------------------------------------
    def embed(self) -> Tuple[Tensor, Tensor]:
        """Final ``(user [U, d], item [N, d])`` embeddings in the current mode."""
        raise NotImplementedError

    def forward(self, data=None) -> Tuple[Tensor, Tensor]:
        """:meth:`embed` (``data`` is accepted for the ``model(data)`` idiom; the
        model was built from it, so it must have the same numbers of users and
        items)."""
        if data is not None:
            try:
                u, n = int(data['user'].num_nodes), int(data['item'].num_nodes)
            except (KeyError, AttributeError, TypeError):
                u, n = self.num_users, self.num_items
            if (u, n) != (self.num_users, self.num_items):
                raise ValueError(f'{type(self).__name__}: built for {self.num_users} '
                                 f'users and {self.num_items} items, got data with '
                                 f'{u} and {n}')
        return self.embed()

    def loss(self, batch: BPRBatch) -> Dict[str, Tensor]:
        """The loss of one batch: named 0-dim tensors, ``'total'`` backpropagated.

        ``batch`` may be one process's slice of a global batch (``batch.shard``);
        write per-triple terms with ``batch.mean`` / ``batch.sum`` and terms that
        couple the triples on ``batch.gather(rows)`` (the module docstring gives the
        rule)."""
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> Optional[Dict[str, Any]]:
        """Called before training epoch ``epoch`` (0-based); may return values to
        record in the epoch's history (e.g. a loss weight in force)."""
        return None

    def diagnose(self, history: Sequence[Dict[str, Any]]) -> List[str]:
        """Warnings about a finished run, from its per-epoch history (e.g. a loss
        that never moved); the trainer logs them and writes them to the results."""
        return []

    @property
    def trainable(self) -> bool:
        """Whether the model has parameters to train (most-popular has none)."""
        return any(p.requires_grad for p in self.parameters())

    # -- serving -------------------------------------------------------------------------
    @torch.no_grad()
    def eval_embeddings(self) -> Tuple[Tensor, Tensor]:
        """:meth:`embed` in eval mode, without grad, leaving the module as it is:
        computed on an eval-mode view (:func:`~mambarec_pyg.utils.eval_view`), so
        the model's own mode is never flipped and concurrent calls are safe."""
        return eval_view(self).embed()

    def _ids(self, ids, n: int, what: str) -> Tensor:
        device = self.train_rowptr.device
        ids = torch.as_tensor(ids, device=device)
        if ids.is_floating_point():
            raise ValueError(f'{what} ids: expected integers, got {ids.dtype}')
        ids = ids.long().view(-1)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= n):
            bad = ids[(ids < 0) | (ids >= n)][0]
            raise ValueError(f'{what} id {int(bad)}: expected an id in [0, {n})')
        return ids

    @torch.no_grad()
    def score(self, users, items) -> Tensor:
        """Scores of the pairs ``(users[k], items[k])`` (eval mode)."""
        users = self._ids(users, self.num_users, 'user')
        items = self._ids(items, self.num_items, 'item')
        if users.shape != items.shape:
            raise ValueError(f'score: expected as many users as items, got '
                             f'{users.numel()} and {items.numel()}')
        user_emb, item_emb = self.eval_embeddings()
        return (user_emb[users] * item_emb[items]).sum(dim=-1)

    @torch.no_grad()
    def recommend(self, users, k: int = 20, exclude_training: bool = True,
                  return_scores: bool = False, batch_size: int = 4096
                  ) -> Union[Tensor, Tuple[Tensor, Tensor]]:
        """The top-``k`` items per user, best first (eval mode).

        Returns ``items [len(users), k]`` (and ``scores`` with ``return_scores``).
        With ``exclude_training`` a user's training items are never returned; a user
        with fewer than ``k`` other items gets them all, then ``-1`` (score
        ``-inf``) in the remaining places.
        """
        users = self._ids(users, self.num_users, 'user')
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f'recommend: expected k >= 1, got {k!r}')
        user_emb, item_emb = self.eval_embeddings()
        exclude = self.training_items() if exclude_training else None
        items, scores = rank_items(user_emb, item_emb, users, k, exclude, batch_size)
        return (items, scores) if return_scores else items

    def training_items(self):
        """Each user's training items (:class:`~mambarec_pyg.ranking.ItemLists`)."""
        from ..ranking import ItemLists
        return ItemLists.from_csr(self.train_rowptr, self.train_items)

    def extra_repr(self) -> str:
        return (f'{self.num_users} users, {self.num_items} items, modalities='
                f'{self.modalities}')
