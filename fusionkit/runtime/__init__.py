"""Runtime: the low-level pieces both training and evaluation use.

The run config (:mod:`~fusionkit.runtime.config`), devices and precision
(:mod:`~fusionkit.runtime.device`), torch.distributed helpers
(:mod:`~fusionkit.runtime.distributed`), checkpoint files (:mod:`~fusionkit.runtime.checkpoint`),
the run directory's file names (:mod:`~fusionkit.runtime.rundir`) and running a model over a loader
(:mod:`~fusionkit.runtime.predict`). It imports only the model, the data and the utilities below
it, so ``train`` and ``evaluate`` share it without importing each other.
"""
