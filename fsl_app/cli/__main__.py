"""``python -m fsl_app.cli ...``: the same as the ``fsl-app`` command."""

import sys

from .commands import main

sys.exit(main())
