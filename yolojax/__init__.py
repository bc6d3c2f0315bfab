"""yolojax: Ultralytics YOLOv8 object detection in JAX/Flax."""

from yolojax.runtime import configure_xla_cpu

__version__ = "0.1.0"

configure_xla_cpu()  # before JAX starts its backend: XLA reads XLA_FLAGS once


def load_weights(path):
    """Load variables and model info from a .pt, a converted directory or a train workdir.

    See :func:`yolojax.weights.load_weights`.
    """
    from yolojax.weights import load_weights as _load

    return _load(path)
