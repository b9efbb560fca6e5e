"""Fitting VASP: A/B batches, Keras callbacks and the trainer."""
