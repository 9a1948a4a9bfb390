"""``python -m mambarec_pyg.cli`` (also under ``torchrun``): the ``mambarec`` command."""
import sys

from . import main

sys.exit(main())
