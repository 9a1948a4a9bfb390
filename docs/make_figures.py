"""Regenerate the example figures in docs/figures/ from a --quick synthetic run of
every experiment (what each ``mambarec experiment`` command produces, in minutes on a
CPU; the numbers are NOT comparable with the paper's).

    python3 docs/make_figures.py              # runs in a temporary directory
    python3 docs/make_figures.py --work runs/docs-figures   # keep (and resume) the runs

It is the same as running, for NAME in table2 table3 ablation sensitivity reduction
embeddings, ``mambarec experiment NAME --quick --output WORK/NAME`` and
``mambarec plot`` on three of Table 2's runs, then copying the PNGs here at a lower
resolution.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from mambarec_pyg.experiments import plots, run_experiment, synthetic_setup  # noqa: E402

FIGURES = HERE / 'figures'
#: (experiment, its figure files, the names they get in docs/figures/).
OUTPUTS = (
    ('table2', {'table2.png': 'table2.png'}),
    ('table3', {'table3.png': 'table3.png'}),
    ('ablation', {'ablation.png': 'ablation.png'}),
    ('sensitivity', {'figure4_cl_weight.png': 'figure4_cl_weight.png',
                     'figure5_reduction_mmd.png': 'figure5_reduction_mmd.png'}),
    ('reduction', {'reduction.png': 'reduction.png'}),
    ('embeddings', {'embeddings_synthetic-tiny.png': 'embeddings.png'}),
)
#: the runs of Table 2 whose training curves are shown.
CURVES = ('mambarec', 'lightgcn', 'bpr')


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--work', type=Path, help='where the runs go (default: a '
                        'temporary directory, removed afterwards)')
    parser.add_argument('--dpi', type=int, default=72, help='resolution of the copies')
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix='mambarec-docs-'))
    plots.DPI = args.dpi
    FIGURES.mkdir(exist_ok=True)
    start = time.perf_counter()
    try:
        for name, files in OUTPUTS:
            t0 = time.perf_counter()
            setup = synthetic_setup(work / name, quick=True, quiet=True)
            result = run_experiment(name, setup)
            for src, dst in files.items():
                shutil.copyfile(setup.output / src, FIGURES / dst)
            failed = ', '.join(r.cell.key for r in result.failed)
            print(f'{name}: {time.perf_counter() - t0:.0f} s'
                  + (f' (failed runs: {failed})' if failed else ''))
        runs = work / 'table2' / 'runs' / 'synthetic-tiny'
        plots.plot_runs([runs / m / 'seed-999' for m in CURVES
                         if (runs / m / 'seed-999').is_dir()],
                        FIGURES / 'curves.png', labels=None)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f'figures in {FIGURES} ({time.perf_counter() - start:.0f} s in all)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
