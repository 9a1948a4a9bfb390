r"""The names of the authors' released MambaRec checkpoint, mapped to this
library's :class:`~mambarec_pyg.models.MambaRec` parameters: export to and load from
the released state dict (the parity test, ``tests/models/test_parity.py``, loads the
released weights this way).

The mapping holds for a two-modality reference-variant model with local alignment,
the first modality in the released "image" role (reduced) and the second "text".
:class:`~mambarec_pyg.models.MambaRec`'s methods of the same names call these.
"""
from __future__ import annotations

from typing import Dict, List, Mapping

import numpy as np
import torch
from torch import Tensor

__all__ = ['released_names', 'released_state_dict', 'load_released_state_dict']


def released_names(model) -> Dict[str, str]:
    """The released implementation's state-dict names mapped to this model's
    (a two-modality reference-variant model with local alignment, the first
    modality in the released "image" role and reduced, the second "text")."""
    s = model.spec
    if s.variant != 'reference' or len(model.modalities) != 2 or \
            model.dreams is None or model.reduced_modalities != model.modalities[:1] \
            or model.norm is None:
        raise ValueError(
            'released parameters need a reference-variant MambaRec with local '
            'alignment and two modalities, the first (released "image") reduced '
            f'and the second ("text") not; got variant={s.variant!r}, modalities='
            f'{model.modalities}, reduced={model.reduced_modalities}, '
            f'local_alignment={s.dream}')
    v, t = model.modalities
    names = {
        'user_embedding.weight': 'user_embedding.weight',
        'item_id_embedding.weight': 'item_embedding.weight',
        'image_embedding.weight': f'features.{v}',
        'text_embedding.weight': f'features.{t}',
        'query_common.0.weight': 'fusion.query.0.weight',
        'query_common.0.bias': 'fusion.query.0.bias',
        'query_common.2.weight': 'fusion.query.2.weight',
    }
    for p in ('weight', 'bias'):
        names[f'norm.{p}'] = f'norm.{p}'
        names[f'image_reduce.{p}'] = f'projections.{v}.reduce.{p}'
        names[f'image_trs.{p}'] = f'projections.{v}.trs.{p}'
        names[f'text_trs.{p}'] = f'projections.{t}.trs.{p}'
        names[f'gate_v.0.{p}'] = f'item_gates.{v}.{p}'
        names[f'gate_t.0.{p}'] = f'item_gates.{t}.{p}'
        names[f'gate_image_prefer.0.{p}'] = f'fusion.preference_gates.{v}.{p}'
        names[f'gate_text_prefer.0.{p}'] = f'fusion.preference_gates.{t}.{p}'
    # DREAM keeps the released names below its prefix.
    for m, released in ((v, 'image'), (t, 'text')):
        for key in model.dreams[m].state_dict():
            names[f'dream_{released}.{key}'] = f'dreams.{m}.{key}'
    return names

def released_state_dict(model, grads: bool = False) -> Dict[str, Tensor]:
    """This model's state under the released names (see :meth:`released_names`);
    ``grads=True``: the gradients of the trainable entries instead."""
    own = dict(model.named_parameters()) if grads else model.state_dict()
    out = {}
    for released, name in released_names(model).items():
        if name in own:
            value = own[name].grad if grads else own[name]
            if value is not None:
                out[released] = value.detach()
    return out

def load_released_state_dict(model, state_dict: Mapping[str, object]) -> None:
    """Load the authors' released parameters and BatchNorm statistics, keyed by
    their names (values: numpy arrays or tensors).

    Raises:
        ValueError: one error listing every missing, unexpected or mis-shaped
            entry (name, expected shape, given shape), before anything is changed.
    """
    names = released_names(model)
    own = model.state_dict()
    problems: List[str] = []
    new = {}
    for key, value in state_dict.items():
        if key not in names:
            problems.append(f'unexpected: {key}')
            continue
        tensor = value if isinstance(value, Tensor) else torch.as_tensor(
            np.asarray(value))
        expected = tuple(own[names[key]].shape)
        if tuple(tensor.shape) != expected:
            problems.append(f'mis-shaped: {key}: expected {expected}, got '
                            f'{tuple(tensor.shape)}')
            continue
        new[names[key]] = tensor
    for key, name in names.items():
        if key not in state_dict:
            problems.append(f'missing: {key} (expected shape '
                            f'{tuple(own[name].shape)})')
    if problems:
        raise ValueError(f'load_released_state_dict: {len(problems)} entries do '
                         f'not match this model:\n  ' + '\n  '.join(problems))
    with torch.no_grad():
        for name, value in new.items():
            own[name].copy_(value)
