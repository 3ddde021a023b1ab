"""stpp: semi-supervised semantic segmentation with ST++ self-training, made usable."""

__version__ = "0.1.0"
