"""Whole-scene prediction: georeferenced embeddings, change and class maps of any size, in constant memory.

``embed`` writes a backbone's patch features over a scene as a COG at patch resolution (the scene's
CRS, its transform scaled by the patch size) with a PCA preview; ``change`` writes a change model's
probability, mask and polygons over a pair of dates on date 1's grid; ``classify`` writes a scene
classifier's class index and class probabilities per pixel (overlapping windows blended) on the
scene's grid. Scenes are read through the
tiler (:mod:`rsmae.predict.scene`), scanned window by window (:mod:`rsmae.predict.windows`) and
written as the scan goes (:mod:`rsmae.predict.sink`, which draws the output layout).
"""

from rsmae.predict.errors import PredictError
from rsmae.predict.run import PredictConfig, predict_change, predict_classify, predict_embed

__all__ = ["PredictConfig", "PredictError", "predict_change", "predict_classify", "predict_embed"]
