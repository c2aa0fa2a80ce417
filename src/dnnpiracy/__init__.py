"""dnnpiracy: reproduce and extend "Deep Neural Network Piration without Accuracy Loss".

Pipeline, in import order: data -> models -> watermark (owner) -> attack (pirate) -> evaluation -> experiments -> cli.
"""

__version__ = "0.1.0"
