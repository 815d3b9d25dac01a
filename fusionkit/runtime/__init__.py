"""Runtime: the low-level pieces both training and evaluation use.

The run config (:mod:`~fusionkit.runtime.config`), devices and precision
(:mod:`~fusionkit.runtime.device`), torch.distributed helpers
(:mod:`~fusionkit.runtime.distributed`), checkpoint files (:mod:`~fusionkit.runtime.checkpoint`),
the run directory as one object (:mod:`~fusionkit.runtime.rundir`, its lock
:mod:`~fusionkit.runtime.lock`), and the loop that runs a model over a loader
(:mod:`~fusionkit.runtime.predict`, its TTA views :mod:`~fusionkit.runtime.tta`). It imports only
the layers below it; training (:mod:`fusionkit.train`) and using a trained model
(:mod:`fusionkit.inference`) are the two peers above it.
"""
