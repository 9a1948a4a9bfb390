"""The errors of the library: one base, :class:`MambaRecError`, and its kinds.

Every failure the library reports on purpose -- a bad option, malformed data, an
unreadable checkpoint, a busy run directory, a diverged run -- is a
:class:`MambaRecError`, so a program (the ``mambarec`` command, the experiment
runner, your own script) catches the one base::

    from mambarec_pyg.errors import ConfigError, MambaRecError

    try:
        run(config, 'runs/x')
    except ConfigError:      # the settings: fix the command line or the YAML
        ...
    except MambaRecError:    # anything else the library reports
        ...

Each kind keeps the built-in base it had before this module existed
(:class:`ValueError` or :class:`RuntimeError`), so ``except ValueError`` code goes on
working, and each stays importable where it was defined before
(``mambarec_pyg.config.ConfigError``, ``mambarec_pyg.data.errors.DataError``,
``mambarec_pyg.train.checkpoint.CheckpointError``, ...).

This module is the ground floor of the package: it imports nothing from it, so any
module may import it.
"""
from __future__ import annotations

__all__ = ['MambaRecError', 'ConfigError', 'DataError', 'NegativeSamplingError',
           'CheckpointError', 'RunDirectoryBusy', 'TrainingDivergedError',
           'DistributedError', 'NonFiniteError', 'CollectedFileMissing']


class MambaRecError(Exception):
    """Base class of every error the library raises on purpose; the message says
    what was expected and where (the file, row, field or option)."""


class ConfigError(MambaRecError, ValueError):
    """A configuration value or key is not what the library expects."""


class DataError(MambaRecError, ValueError):
    """An input file or data object is malformed.

    The message names the file, and the line, column or field at fault, together with
    what was expected and what was found.
    """


class NegativeSamplingError(MambaRecError, ValueError):
    """No negative item can be drawn for some user."""


class CheckpointError(MambaRecError, ValueError):
    """A file is not a checkpoint this library can safely read."""


class RunDirectoryBusy(MambaRecError, RuntimeError):
    """Another process is running in this directory."""


class TrainingDivergedError(MambaRecError, RuntimeError):
    """The loss or the weights became NaN or infinite; the message names the epoch and
    the batch and loss parts, or the first non-finite tensor, and what is on disk."""


class DistributedError(MambaRecError, RuntimeError):
    """The distributed launch or a collective failed; the message says which
    variable, process or operation."""


class NonFiniteError(MambaRecError, ValueError):
    """A model's weights or embeddings hold NaN or infinite values (it diverged), so
    any ranking it gives is arbitrary; the message names the tensor."""


class CollectedFileMissing(MambaRecError, FileNotFoundError):
    """An experiment's report needs a file that its collect step writes (per-user
    metrics, parameter counts, t-SNE points) and it is missing or older than the run
    it was collected from; the message names the file and says to run the command
    again (finished runs are reused and the files collected again)."""
