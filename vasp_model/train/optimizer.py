"""How a fit is compiled: the configured Keras optimizer and the focal loss, and on TensorFlow, when XLA does
not compile the whole train step, each variable's optimizer update compiled by XLA on its own."""

from __future__ import annotations

from vasp_model.core.config import VaspConfig


def compile_model(model, config: VaspConfig, learning_rate: float) -> bool:
    """Compile ``model`` for a fit: the configured optimizer at ``learning_rate``, the focal loss and the
    configured ``jit_compile``. With ``jit_compile="auto"`` on TensorFlow, where Keras leaves the step to
    TensorFlow's own kernels (on CPU), the optimizer's updates are fused (:func:`fuse_updates`).
    Returns whether they are."""
    import keras

    from vasp_model.nn.losses import FocalLoss

    mc, tc = config.model, config.train
    settings = {"learning_rate": learning_rate}
    if tc.ema_momentum is not None:
        settings.update(use_ema=True, ema_momentum=tc.ema_momentum)
    optimizer = keras.optimizers.get({"class_name": tc.optimizer, "config": settings})
    model.compile(optimizer=optimizer, loss=FocalLoss(mc.focal_alpha, mc.focal_gamma), jit_compile=tc.jit_compile)
    fused = keras.backend.backend() == "tensorflow" and tc.jit_compile == "auto" and not model.jit_compile
    if fused:
        fuse_updates(optimizer)
    return fused


def fuse_updates(optimizer) -> None:
    """Run each variable's update of ``optimizer`` (TensorFlow backend) as one XLA-compiled function.

    Left to TensorFlow, an update such as Nadam's is a dozen elementwise ops, each one a pass over the
    variable's memory and an I×I temporary for the Neural EASE kernel; compiled, it is one fused pass. The
    optimizer's class, configuration and variables stay Keras' own, so saved models and checkpoints do too.
    """
    import tensorflow as tf
    from keras import ops

    update_step = optimizer.update_step
    compiled = {}

    def fused_update_step(gradient, variable, learning_rate):
        key = variable.ref()
        if key not in compiled:
            compiled[key] = tf.function(lambda g, lr: update_step(g, variable, lr), jit_compile=True)
        return compiled[key](gradient, ops.cast(learning_rate, variable.dtype))

    optimizer.update_step = fused_update_step
