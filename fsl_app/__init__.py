"""fsl_app: few-shot image classification studio (UI-free core)."""

__version__ = "0.1.0"
