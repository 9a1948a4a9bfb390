"""Flags from dataclass fields: ``--<section>.<field>`` for every field of a config
section."""
from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, Dict, Mapping, Optional, Sequence

from ..config import describe_type, field_docs
from .common import DEFAULT_MODEL, _arg_type, _sections


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group('data (short forms of the data.* options)')
    g.add_argument('--data', dest='short_root', metavar='ROOT',
                   help='directory holding MMRec datasets (data.root)')
    g.add_argument('--dataset', dest='short_dataset', metavar='NAME',
                   help='MMRec dataset ROOT/NAME/NAME.inter + *_feat.npy '
                        '(data.dataset)')
    g.add_argument('--synthetic', dest='short_synthetic', metavar='PRESET',
                   help='a synthetic preset: tiny, baby, sports, clothing '
                        '(data.synthetic)')
    g.add_argument('--synthetic-seed', dest='short_synthetic_seed', metavar='S',
                   type=_arg_type(int), help='seed of the synthetic data')


def _add_config_flags(p: argparse.ArgumentParser, model_name: str) -> None:
    from ..models.registry import list_models
    for section, cls in _sections(model_name):
        title = (f'{section} options ({cls.__name__} of model {model_name!r}; '
                 f'--{section}.FIELD VALUE)' if section == 'model' else
                 f'{section} options ({cls.__name__}; --{section}.FIELD VALUE)')
        g = p.add_argument_group(title)
        if section == 'model':
            g.add_argument('--model.name', dest='model_name', metavar='NAME',
                           help=f'the model: {", ".join(list_models())} (default: '
                                f'{DEFAULT_MODEL}; `mambarec models` describes each; '
                                f'the --model.* options below are those of '
                                f'{model_name!r})')
        add_section_flags(g, section, cls)


#: The prefix of the ``dest`` of every config flag: ``cfg:<section>.<field>``.
PREFIX = 'cfg:'


def add_section_flags(group, section: str, cls, skip: Sequence[str] = (),
                      notes: Optional[Mapping[str, str]] = None) -> None:
    """One flag ``--<section>.<field-with-dashes>`` per field of the dataclass
    ``cls`` into ``group``, typed by the field's annotation, its help from the
    field's doc comment and default; the value lands in ``cfg:<section>.<field>``
    (``None`` when not given; :func:`config_overrides` collects them). ``skip``:
    fields without a flag; ``notes``: text added to a field's help."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    notes = notes or {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = f.default_factory()  # type: ignore[misc]
        else:
            default = None
        tp = hints[f.name]
        shown = ','.join(map(str, default)) if isinstance(default, tuple) else (
            "none (the model's default)" if default is None and section == 'train'
            else 'none' if default is None else default)
        group.add_argument(
            f'--{section}.{f.name.replace("_", "-")}', dest=f'{PREFIX}{section}.{f.name}',
            type=_arg_type(tp), metavar='BOOL' if tp is bool else
            f.name.upper().split('_')[-1],
            help=((docs[f.name].replace('``', '') + ' ' if f.name in docs else '') +
                  notes.get(f.name, '') +
                  f'[{describe_type(tp)}; default: {shown}]').replace('%', '%%'))


def config_overrides(args: argparse.Namespace, section: Optional[str] = None
                     ) -> Dict[str, Any]:
    """The config flags given on the command line, ``{'section.field': value}``
    (only ``section``'s, without the prefix ``section.``, when it is given)."""
    out: Dict[str, Any] = {}
    for key, value in vars(args).items():
        if key.startswith(PREFIX) and value is not None:
            name = key[len(PREFIX):]
            if section is None:
                out[name] = value
            elif name.startswith(section + '.'):
                out[name[len(section) + 1:]] = value
    return out


def add_executor_flags(p: argparse.ArgumentParser, what: str = 'cells') -> None:
    """``--executor``, ``--workers``, ``--ray-address``, the ``--slurm-*`` options and
    ``--log``: where the runs of an experiment or a search go, and what watches
    them."""
    g = p.add_argument_group(f'executor (where the {what} run; the results do not '
                             f'depend on it)')
    g.add_argument('--executor', choices=('local', 'ray', 'slurm'), default='local',
                   help='local: processes on this machine (default); ray: Ray tasks '
                        "(pip install 'mambarec-pyg[ray]'); slurm: a Slurm job array "
                        "through submitit (pip install 'mambarec-pyg[slurm]')")
    g.add_argument('--workers', type=_arg_type(int), default=1, metavar='N',
                   help=f'{what} at once (default 1: one after the other in this '
                        f'process). Locally each worker gets one GPU '
                        f'(CUDA_VISIBLE_DEVICES, round robin) where there are GPUs, '
                        f'and cores/N CPU threads (where --train.num-threads is 0)')
    g.add_argument('--ray-address', metavar='ADDRESS', help='an existing Ray cluster '
                   '(ray://HOST:10001 or HOST:6379; default: a local cluster with N '
                   'CPUs)')
    g.add_argument('--slurm-partition', metavar='NAME', help='Slurm partition')
    g.add_argument('--slurm-time', type=_arg_type(int), default=24 * 60, metavar='MIN',
                   help='time limit of each task in minutes (default 1440)')
    g.add_argument('--slurm-gpus', type=_arg_type(int), default=0, metavar='G',
                   help='GPUs per task (default 0)')
    g.add_argument('--slurm-cpus', type=_arg_type(int), default=1, metavar='C',
                   help='CPUs per task (default 1; the run\'s threads)')
    g.add_argument('--slurm-mem', type=_arg_type(float), metavar='GB',
                   help='memory per task in GB')
    g.add_argument('--slurm-account', metavar='NAME', help='Slurm account')
    g.add_argument('--slurm-option', action='append', metavar='KEY=VALUE',
                   help='any other sbatch option, e.g. --slurm-option qos=high '
                        '(repeatable)')
    g.add_argument('--slurm-cluster', choices=('slurm', 'local', 'debug'),
                   default='slurm', help="submitit's executor: slurm (default); "
                   'local runs the job array on this machine (to try a setup)')
    g.add_argument('--log', nargs='+', choices=('tensorboard', 'mlflow'), default=(),
                   metavar='TRACKER', help='also log every run to TensorBoard '
                   '(OUTPUT/tensorboard/) and/or MLflow (OUTPUT/mlruns/, or '
                   '$MLFLOW_TRACKING_URI), one group of runs per command; needs '
                   "pip install 'mambarec-pyg[track]'. Every run writes metrics.csv "
                   'and metrics.jsonl anyway')


def executor_options(args: argparse.Namespace):
    """The :class:`~mambarec_pyg.experiments.executors.ExecutorOptions` of the
    command line."""
    from ..config import ConfigError
    from ..train.executors import ExecutorOptions
    extra = {}
    for spec in args.slurm_option or ():
        key, eq, value = spec.partition('=')
        if not eq or not key:
            raise ConfigError(f'--slurm-option {spec!r}: expected KEY=VALUE')
        extra[key] = value
    return ExecutorOptions(
        kind=args.executor, workers=args.workers, ray_address=args.ray_address,
        slurm_partition=args.slurm_partition, slurm_time=args.slurm_time,
        slurm_gpus=args.slurm_gpus, slurm_cpus=args.slurm_cpus,
        slurm_mem_gb=args.slurm_mem, slurm_account=args.slurm_account,
        slurm_cluster=args.slurm_cluster, slurm_extra=extra)
