"""MLflow: the tracked run, the pyfunc model, registry I/O and the pure promotion rule."""
