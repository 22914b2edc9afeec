"""Reusable step processors: step bodies that pipelines plug in with ``add_step``.

>>> from streams import Pipeline
>>> from processors import Transform
>>> p = Pipeline("words")
>>> step = p.add_step("split", Transform(lambda text: text.split()))
>>> step.inline
True
"""

from processors.transform import Transform

__all__ = ["Transform"]
