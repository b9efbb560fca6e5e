"""VASP = FLVAE ⊙ Neural EASE (Vančura & Kordík, ICANN 2021; reference: zombak79/vasp).

FLVAE: dense-residual encoder blocks → Dense mean / log-variance → reparameterized z
(the mean at inference) → dense-residual decoder blocks → ``sigmoid(Dense_I(decoder)) *
sigmoid(Dense_I(z))``. Neural EASE: ``sigmoid(x @ W)``, ``diag(W) = 0`` (``W`` dense, or pruned to each
item's strongest targets: ``PrunedNeuralEASE``). The model's output
is the element-wise product of both paths, a probability per item.

The KL term is added with ``add_loss`` during training, so a standard
``compile(loss=FocalLoss(...))`` + ``fit`` works on every Keras backend.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from vasp_model.nn.layers import DenseResidualStack, HostNeuralEASE, NeuralEASE, PrunedNeuralEASE, Sampling
from vasp_model.nn.losses import kl_divergence


@keras.saving.register_keras_serializable(package="vasp")
class VASP(keras.Model):
    def __init__(
        self,
        n_items: int,
        hidden: int = 512,
        latent: int = 256,
        encoder_blocks: int = 3,
        decoder_blocks: int = 2,
        dropout: float = 0.0,
        normalize_input: bool = False,
        ease_l2: float = 0.0,
        ease_init: str = "glorot_uniform",
        ease_neighbours: int | None = None,
        ease_max_positives: int | None = None,
        ease_batch_positives: int | None = None,
        kl_weight: float = 1.0,
        seed: int | None = None,
        ease_on_host: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.n_items = int(n_items)
        self.hidden = int(hidden)
        self.latent = int(latent)
        self.encoder_blocks = int(encoder_blocks)
        self.decoder_blocks = int(decoder_blocks)
        self.dropout = float(dropout)
        self.normalize_input = bool(normalize_input)
        self.ease_l2 = float(ease_l2)
        self.ease_init = ease_init
        self.ease_neighbours = None if ease_neighbours is None else int(ease_neighbours)
        self.ease_max_positives = self.n_items if ease_max_positives is None else int(ease_max_positives)
        self.ease_batch_positives = None if ease_batch_positives is None else int(ease_batch_positives)
        self.kl_weight = float(kl_weight)
        self.seed = seed
        self.input_dropout = keras.layers.Dropout(self.dropout, seed=seed, name="input_dropout")
        self.encoder = DenseResidualStack(self.hidden, self.encoder_blocks, name="encoder")
        self.z_mean = keras.layers.Dense(self.latent, name="z_mean")
        self.z_log_var = keras.layers.Dense(self.latent, name="z_log_var")
        self.sampling = Sampling(seed=seed, name="sampling")
        self.decoder = (
            DenseResidualStack(self.hidden, self.decoder_blocks, name="decoder") if self.decoder_blocks else None
        )
        self.decoder_out = keras.layers.Dense(self.n_items, activation="sigmoid", name="decoder_out")
        self.latent_out = keras.layers.Dense(self.n_items, activation="sigmoid", name="latent_out")
        if self.ease_neighbours is None:
            ease = HostNeuralEASE if ease_on_host else NeuralEASE  # for scoring on the host only: no Keras variable
            self.ease = ease(self.n_items, l2=self.ease_l2, kernel_initializer=ease_init, name="neural_ease")
        else:
            self.ease = PrunedNeuralEASE(
                self.n_items,
                self.ease_neighbours,
                self.ease_max_positives,
                l2=self.ease_l2,
                kernel_initializer=ease_init,
                batch_positives=self.ease_batch_positives,
                name="neural_ease",
            )

    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if input_shape[-1] != self.n_items:
            raise ValueError(f"VASP expects {self.n_items} items, got input shape {input_shape}")
        self.encoder.build(input_shape)
        hidden_shape = (*input_shape[:-1], self.hidden)
        latent_shape = (*input_shape[:-1], self.latent)
        self.z_mean.build(hidden_shape)
        self.z_log_var.build(hidden_shape)
        if self.decoder is not None:
            self.decoder.build(latent_shape)
        self.decoder_out.build(hidden_shape if self.decoder is not None else latent_shape)
        self.latent_out.build(latent_shape)
        self.ease.build(input_shape)
        self.built = True

    def encode(self, x, training=None):
        h = x
        if self.normalize_input:
            h = h / ops.maximum(ops.sqrt(ops.sum(ops.square(h), axis=-1, keepdims=True)), 1e-8)
        h = self.input_dropout(h, training=training)
        h = self.encoder(h)
        return self.z_mean(h), self.z_log_var(h)

    def flvae(self, x, training=None):
        mean, log_var = self.encode(x, training=training)
        z = self.sampling(mean, log_var, training=training)
        if training and self.kl_weight > 0:
            self.add_loss(self.kl_weight * ops.mean(kl_divergence(mean, log_var)))
        d = self.decoder(z) if self.decoder is not None else z
        return self.decoder_out(d) * self.latent_out(z)

    def call(self, x, training=None):
        out = self.flvae(x, training=training) * self.ease(x)
        return ops.cast(out, "float32")

    def hidden_weights(self) -> dict[str, Any]:
        """The FLVAE at inference from its first product (the normalized input times the first encoder
        kernel, :meth:`input_kernel`) to what its two output layers read (``[d, z]``: the decoder's last hidden
        layer and the latent mean), as float32 NumPy: ``encoder`` and ``decoder`` (empty without one) list each
        dense-residual block's ``(kernel, bias, gamma, beta, epsilon)`` (the encoder's first kernel is the input
        kernel, applied elsewhere), ``z_mean`` is ``(kernel, bias)``. For inference that computes them itself
        (``ModelBundle`` on a CPU-only backend: :class:`vasp_model.recommenders.host_hidden.HostHidden`)."""

        def numpy(weight) -> np.ndarray:
            return np.asarray(ops.convert_to_numpy(weight), dtype=np.float32)

        def blocks(stack) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]]:
            if stack is None:
                return []
            for norm in stack.norms:
                if not (norm.center and norm.scale) or norm.rms_scaling or norm.axis not in (-1, [-1], 1, [1]):
                    raise ValueError(f"{norm.name} is not a layer normalization over the last axis with both weights")
            return [
                (numpy(dense.kernel), numpy(dense.bias), numpy(norm.gamma), numpy(norm.beta), float(norm.epsilon))
                for dense, norm in zip(stack.denses, stack.norms, strict=True)
            ]

        return {
            "encoder": blocks(self.encoder),
            "z_mean": (numpy(self.z_mean.kernel), numpy(self.z_mean.bias)),
            "decoder": blocks(self.decoder),
        }

    def output_weights(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """``(kernel, bias)`` of ``decoder_out`` and ``latent_out`` as float32 NumPy: the FLVAE's output is
        ``sigmoid(d @ kernel + bias)`` of the one times that of the other (see :meth:`hidden_weights`)."""
        layers = (self.decoder_out, self.latent_out)
        if any(getattr(layer.activation, "__name__", None) != "sigmoid" for layer in layers):  # no serializing:
            # Keras' serializer imports TensorFlow to look for its shapes, whatever the backend
            raise ValueError("the FLVAE's output layers must end in a sigmoid")
        return [
            tuple(np.asarray(ops.convert_to_numpy(w), dtype=np.float32) for w in (layer.kernel, layer.bias))
            for layer in layers
        ]

    def input_kernel(self) -> np.ndarray:
        """The first encoder kernel ``[I, hidden]`` as float32 NumPy (what :meth:`hidden_weights` start after)."""
        return np.asarray(ops.convert_to_numpy(self.encoder.denses[0].kernel), dtype=np.float32)

    def item_weights(self) -> list[tuple[keras.Variable, tuple[int, ...]]]:
        """Every weight with an axis indexed by item, and those axes: the first encoder layer's rows,
        the output layers' columns and biases, Neural EASE's rows and columns. Every other weight is
        independent of the catalog (a warm start copies it as is, see ``vasp_model.train.warm_start``)
        but those of :meth:`fresh_weights`."""
        ease = [(self.ease.kernel, (0, 1))] if self.ease_neighbours is None else []
        return [
            (self.encoder.denses[0].kernel, (0,)),
            (self.decoder_out.kernel, (1,)),
            (self.decoder_out.bias, (0,)),
            (self.latent_out.kernel, (1,)),
            (self.latent_out.bias, (0,)),
            *ease,
        ]

    def fresh_weights(self) -> list[keras.Variable]:
        """Weights a warm start leaves as initialised: a pruned Neural EASE kernel (its target items are
        chosen from tonight's closed-form EASE, not mapped from another catalog's)."""
        return [] if self.ease_neighbours is None else [self.ease.values, self.ease.targets]

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.n_items)

    def get_config(self):
        return {
            "name": self.name,
            "n_items": self.n_items,
            "hidden": self.hidden,
            "latent": self.latent,
            "encoder_blocks": self.encoder_blocks,
            "decoder_blocks": self.decoder_blocks,
            "dropout": self.dropout,
            "normalize_input": self.normalize_input,
            "ease_l2": self.ease_l2,
            "ease_init": self.ease_init,
            "ease_neighbours": self.ease_neighbours,
            "ease_max_positives": self.ease_max_positives,
            "ease_batch_positives": self.ease_batch_positives,
            "kl_weight": self.kl_weight,
            "seed": self.seed,
        }


def build_model(
    n_items: int,
    model_config,
    seed: int | None = None,
    max_positives: int | None = None,
    batch_positives: int | None = None,
) -> VASP:
    """A built (weights created) VASP for ``n_items`` from a ``ModelConfig``; ``max_positives``: the most
    items of an input row a pruned Neural EASE kernel reads (default: every item); ``batch_positives``: the
    most nonzeros of a batch it reads as such (see :class:`PrunedNeuralEASE`; default: none)."""
    c = model_config
    model = VASP(
        n_items=n_items,
        hidden=c.hidden,
        latent=c.latent,
        encoder_blocks=c.encoder_blocks,
        decoder_blocks=c.decoder_blocks,
        dropout=c.dropout,
        normalize_input=c.normalize_input,
        ease_l2=c.ease_l2,
        ease_init="zeros" if c.ease_init == "closed_form" else c.ease_init,
        ease_neighbours=c.neighbours_for(n_items),
        ease_max_positives=max_positives,
        ease_batch_positives=batch_positives,
        kl_weight=c.kl_weight,
        seed=seed,
        name="vasp",
    )
    model.build((None, n_items))
    return model


def flops_per_row(n_items: int, model_config, nnz: float | None = None) -> float:
    """Forward matmul FLOPs per input row (2·m·n per Dense); a train step is ≈ 3× this.

    ``nnz``: the row's nonzeros when it goes in sparse (as scoring feeds it): the first encoder Dense
    and Neural EASE then multiply only the ``nnz`` kernel rows of the row's items.
    """
    c = model_config
    rows_in = n_items if nnz is None else nnz
    f = 2 * rows_in * c.hidden  # first encoder Dense
    f += 2 * c.hidden * c.hidden * (c.encoder_blocks - 1)
    f += 2 * 2 * c.hidden * c.latent  # mean + log-var
    if c.decoder_blocks:
        f += 2 * c.latent * c.hidden + 2 * c.hidden * c.hidden * (c.decoder_blocks - 1)
        f += 2 * c.hidden * n_items
    else:
        f += 2 * c.latent * n_items
    f += 2 * c.latent * n_items  # latent_out
    k = c.neighbours_for(n_items)
    f += 2 * rows_in * (n_items if k is None else k)  # Neural EASE (pruned: each of the row's items adds k weights)
    return float(f)
