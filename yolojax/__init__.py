"""yolojax: Ultralytics YOLOv8 object detection in JAX/Flax."""

__version__ = "0.1.0"


def load_weights(path):
    """Load variables and model info from a .pt, a converted directory or a train workdir.

    See :func:`yolojax.convert.load_weights`.
    """
    from yolojax.convert import load_weights as _load

    return _load(path)
