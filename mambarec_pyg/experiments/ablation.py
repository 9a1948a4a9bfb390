"""Figure 3 of the MambaRec paper: the alignment ablation.

Three settings of each row (default: the released MambaRec): the full model,
without local alignment (``model.local_alignment = false``: no DREAM, the
projection's output goes straight to the LayerNorm), and without global alignment
(``model.global_alignment = false``: no MMD and no InfoNCE term).

The report (``ablation.md``, ``.csv``, ``.json``) gives Recall@10/20 and NDCG@10/20
on test and paired tests of the full model against each variant over the test users;
``ablation.png`` is the figure's bar chart. The paper prints Figure 3 as bars only,
so there are no paper numbers to print beside ours.
"""
from __future__ import annotations

from typing import List

from .paper import METRICS
from .report import write_outputs
from .runner import CellResult, Collected, ExperimentResult, Setup, note
from .sweep import Setting, SweepExperiment, settings_bars, settings_table

__all__ = ['Ablation', 'SETTINGS']

#: (directory key, label, overrides).
SETTINGS = (('full', 'full', {}),
            ('no-local', 'w/o LA', {'model.local_alignment': False}),
            ('no-global', 'w/o GA', {'model.global_alignment': False}))


class Ablation(SweepExperiment):
    name = 'ablation'
    title = 'MambaRec without local or global alignment (Figure 3)'
    paper_ref = 'Figure 3'
    per_user = True

    def settings(self, setup: Setup) -> List[Setting]:
        return [Setting(key, label, dict(over)) for key, label, over in SETTINGS]

    def report(self, setup: Setup, results: List[CellResult],
               collected: Collected) -> ExperimentResult:
        rows, settings = self.rows(setup), self.settings(setup)
        md = ['# Figure 3: alignment ablation (test, at the best valid epoch)', '',
              'w/o LA: without local alignment (no DREAM); w/o GA: without global '
              'alignment (no MMD, no InfoNCE).', '']
        caveat = note(setup)
        if caveat:
            md += [f'> **Note.** {caveat}.', '']
        body, records, per_ds, stats = settings_table(
            setup, collected, results, rows, settings, 'full', lambda *a: None)
        md += body
        table = {'experiment': self.name, 'paper': self.paper_ref, 'note': caveat,
                 'metrics': list(METRICS), 'seeds': setup.seeds,
                 'settings': {s.label: s.overrides for s in settings},
                 'datasets': per_ds}
        files = write_outputs(setup.output, self.name, '\n'.join(md), records, table)
        if setup.figures:
            files['figure'] = settings_bars(
                setup, rows, settings, stats, METRICS,
                setup.output / f'{self.name}.png', 'Figure 3: alignment ablation')
        return ExperimentResult(self.name, 'complete', results, files, table)
