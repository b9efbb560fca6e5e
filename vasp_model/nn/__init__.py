"""The VASP network in Keras 3: layers, losses and the model (FLVAE ⊙ Neural EASE)."""
