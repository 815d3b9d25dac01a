"""Runtime: the low-level pieces both training and evaluation use.

The run config (:mod:`~fusionkit.runtime.config`), devices and precision
(:mod:`~fusionkit.runtime.device`), torch.distributed helpers
(:mod:`~fusionkit.runtime.distributed`), checkpoint files (:mod:`~fusionkit.runtime.checkpoint`),
and the run directory's file names (:mod:`~fusionkit.runtime.rundir`). It imports only the model,
the data and the utilities below it; running a trained model lives one layer up, in
:mod:`fusionkit.inference`.
"""
