"""Every ``fsl-app`` command: the parser and the model commands (``commands``), ``export``, the project store's
``project`` and ``suggest`` (``store``), and the studio launcher (``ui``).

Building the parser imports no model library: each command imports torch, timm, scikit-learn or onnxruntime inside
its handler, so ``fsl-app --help`` and ``fsl-app project list`` answer at once.
"""

from .commands import EXIT_USAGE, UserError, build_parser, main

__all__ = ["EXIT_USAGE", "UserError", "build_parser", "main"]
