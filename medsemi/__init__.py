"""medsemi: semi-supervised medical image segmentation under one trainer and one protocol."""

__version__ = "0.1.0"
