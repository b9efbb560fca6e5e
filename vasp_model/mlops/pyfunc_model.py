"""MLflow's models-from-code script of the bundle pyfunc (:class:`vasp_model.mlops.pyfunc.VaspPyfunc`).

:func:`vasp_model.mlops.tracking.log_bundle_model` logs this file as the model's code; MLflow runs
it when the model is loaded, so loading a registered model unpickles nothing. Never imported by
the package itself (``set_model`` is its one effect).
"""

import mlflow.models

from vasp_model.mlops.pyfunc import VaspPyfunc

mlflow.models.set_model(VaspPyfunc())
