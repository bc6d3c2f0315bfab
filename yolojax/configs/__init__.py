"""The configs that ship with yolojax: ``base`` (every default) and one per model and recipe.

Each is a Python file whose ``get_config()`` returns an ``ml_collections.ConfigDict``; load
them by name or path with :func:`yolojax.config.load_config` or on the command line
(``python -m yolojax.train --config yolov8n``, ``yolojax train cfg=quickstart``).
"""
