"""Table 3 of the MambaRec paper: MambaRec with text only, visual only, and both.

Each setting restricts the data to the modalities it names (``data.modalities``:
``text``, ``image``, or both), so the model is built with one or two modality
branches; everything else is the row's configuration (default: the released
MambaRec). With one modality there is no MMD term and the fusion is that modality's
view alone (see :mod:`mambarec_pyg.models.mambarec`).

The report (``table3.md``, ``.csv``, ``.json``, ``.png``) gives Recall@10/20 and
NDCG@10/20 on test, the paper's Table 3 beside ours on its datasets, and paired
tests of "both" against each single modality over the test users.
"""
from __future__ import annotations

from typing import List, Optional

from .paper import METRICS, table3_value
from .presets import Preset
from .report import write_outputs
from .runner import CellResult, Collected, ExperimentResult, Setup, note
from .sweep import Setting, SweepExperiment, settings_bars, settings_table

__all__ = ['Table3', 'SETTINGS']

#: the paper's three inputs: (directory key, label, modalities, paper's name).
SETTINGS = (('text', 'text only', ('text', ), 'text'),
            ('visual', 'visual only', ('image', ), 'visual'),
            ('both', 'text + visual', ('image', 'text'), 'both'))


def _paper(p: Preset, s: Setting, dataset: Optional[str], metric: str):
    if p.name != 'mambarec':
        return None
    return table3_value(s.labels['input'], dataset, metric)


class Table3(SweepExperiment):
    name = 'table3'
    title = 'MambaRec with text only, visual only, and both (Table 3)'
    paper_ref = 'Table 3'
    per_user = True

    def settings(self, setup: Setup) -> List[Setting]:
        return [Setting(key, label, {'data.modalities': list(mods)},
                        {'input': paper})
                for key, label, mods, paper in SETTINGS]

    def report(self, setup: Setup, results: List[CellResult],
               collected: Collected) -> ExperimentResult:
        rows, settings = self.rows(setup), self.settings(setup)
        md = ['# Table 3: MambaRec with text only, visual only, and both '
              '(test, at the best valid epoch)', '']
        caveat = note(setup)
        if caveat:
            md += [f'> **Note.** {caveat}.', '']
        body, records, per_ds, stats = settings_table(
            setup, collected, results, rows, settings, 'text + visual', _paper,
            paper_label="paper's Table 3")
        md += body
        table = {'experiment': self.name, 'paper': self.paper_ref, 'note': caveat,
                 'metrics': list(METRICS), 'seeds': setup.seeds,
                 'settings': {s.label: s.overrides for s in settings},
                 'datasets': per_ds}
        files = write_outputs(setup.output, self.name, '\n'.join(md), records, table)
        if setup.figures:
            files['figure'] = settings_bars(
                setup, rows, settings, stats, ('recall@20', 'ndcg@20'),
                setup.output / f'{self.name}.png', 'Table 3: modalities', _paper,
                "paper's Table 3")
        return ExperimentResult(self.name, 'complete', results, files, table)
