"""scikit-learn's ``load_digits`` (1797 8x8 images, 10 classes) and small flax NNX models.

The named configurations are the project's built-in defaults:

==============  ============================================  ========
name            architecture                                  params
==============  ============================================  ========
``mlp-tiny``    64 -> 16 -> 10, tanh                           1,210
``mlp-small``   64 -> 32 -> 32 -> 10, tanh                     3,466
``mlp-wide``    64 -> 512 -> 512 -> 10, tanh                 301,066
``cnn``         conv3x3(16) -> conv3x3(32) -> dense(10), relu  25,290
==============  ============================================  ========

Trained weights are cached (flax msgpack, never pickle) under ``$HESSIAN_TOOLS_CACHE`` or
``~/.cache/hessian_tools`` so a second run does not retrain.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from hessian_tools.compile_cache import cache_root
from hessian_tools.objective import Objective

__all__ = ["MLP", "CNN", "CONFIGS", "load_digits_data", "cross_entropy", "make_model", "train",
           "digits_objective", "cache_dir"]

LEARNING_RATE = 1e-2   # Adam, for the example models (train, trained_model, cache_path)

CONFIGS = {
    "mlp-tiny": {"kind": "mlp", "widths": (16,)},
    "mlp-small": {"kind": "mlp", "widths": (32, 32)},
    "mlp-wide": {"kind": "mlp", "widths": (512, 512)},
    "cnn": {"kind": "cnn", "channels": (16, 32)},
}


def load_digits_data(*, dtype=jnp.float32, image: bool = False):
    """``(x, y)``: pixels scaled to [0, 1] (``(1797, 64)`` or NHWC ``(1797, 8, 8, 1)``), labels."""
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.dtype(dtype))
    if image:
        x = x.reshape(-1, 8, 8, 1)
    return jnp.asarray(x), jnp.asarray(y, dtype=jnp.int32)


def cross_entropy(logits, batch):
    """Mean softmax cross-entropy of ``logits`` against integer labels ``batch[1]``."""
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()


class MLP(nnx.Module):
    """A fully connected tanh network (Glorot-uniform weights by default)."""

    def __init__(self, widths=(32, 32), *, in_features: int = 64, out_features: int = 10,
                 activation=jnp.tanh, rngs: nnx.Rngs, param_dtype=jnp.float32):
        sizes = (in_features, *widths, out_features)
        self.layers = nnx.List([nnx.Linear(a, b, rngs=rngs, param_dtype=param_dtype)
                                for a, b in zip(sizes[:-1], sizes[1:])])
        self.activation = activation

    def __call__(self, x):
        for layer in self.layers[:-1]:
            x = self.activation(layer(x))
        return self.layers[-1](x)


class CNN(nnx.Module):
    """Two 3x3 'SAME' convolutions (NHWC, relu) and a dense head on 8x8x1 images."""

    def __init__(self, channels=(16, 32), *, out_features: int = 10, rngs: nnx.Rngs,
                 param_dtype=jnp.float32):
        self.conv1 = nnx.Conv(1, channels[0], (3, 3), rngs=rngs, param_dtype=param_dtype)
        self.conv2 = nnx.Conv(channels[0], channels[1], (3, 3), rngs=rngs,
                              param_dtype=param_dtype)
        self.head = nnx.Linear(8 * 8 * channels[1], out_features, rngs=rngs,
                               param_dtype=param_dtype)

    def __call__(self, x):
        x = jax.nn.relu(self.conv1(x))
        x = jax.nn.relu(self.conv2(x))
        return self.head(x.reshape(x.shape[0], -1))


def make_model(name: str = "mlp-small", *, seed: int = 0, param_dtype=jnp.float32):
    """A freshly initialised model of a named configuration (see the module table)."""
    if name not in CONFIGS:
        raise ValueError(f"Unknown example {name!r}; choose one of {sorted(CONFIGS)}.")
    cfg = CONFIGS[name]
    rngs = nnx.Rngs(seed)
    if cfg["kind"] == "mlp":
        return MLP(cfg["widths"], rngs=rngs, param_dtype=param_dtype)
    return CNN(cfg["channels"], rngs=rngs, param_dtype=param_dtype)


def train(model, data, *, steps: int = 300, learning_rate: float = LEARNING_RATE, callback=None):
    """Full-batch Adam on the cross-entropy; modifies and returns ``model``.

    ``callback(step, params, opt_state)``, if given, is called before every step with the
    ``nnx.Param`` state (e.g. to feed a ``SharpnessTracker``).
    """
    optimizer = nnx.Optimizer(model, optax.adam(learning_rate), wrt=nnx.Param)

    @nnx.jit
    def step(model, optimizer, x, y):
        loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(x), (x, y)))(model)
        optimizer.update(model, grads)
        return loss

    for i in range(steps):
        if callback is not None:
            callback(i, nnx.state(model, nnx.Param), optimizer.opt_state)
        step(model, optimizer, *data)
    if callback is not None:
        callback(steps, nnx.state(model, nnx.Param), optimizer.opt_state)
    return model


def cache_dir() -> Path:
    """Where trained example weights are cached (``$HESSIAN_TOOLS_CACHE`` overrides)."""
    return cache_root()


def cache_path(name: str, seed: int = 0, steps: int = 300, learning_rate: float = LEARNING_RATE) -> Path:
    """Where :func:`trained_model` caches the weights of a configuration."""
    return _cache_path(name, seed, steps, learning_rate)


def _cache_path(name, seed, steps, learning_rate) -> Path:
    spec = json.dumps({"name": name, "cfg": CONFIGS[name], "seed": seed, "steps": steps,
                       "lr": learning_rate, "v": 1}, sort_keys=True, default=str)
    digest = hashlib.sha256(spec.encode()).hexdigest()[:12]
    return cache_dir() / f"digits-{name}-{digest}.msgpack"


def trained_model(name: str = "mlp-small", *, seed: int = 0, steps: int = 300,
                  learning_rate: float = LEARNING_RATE, use_cache: bool = True, verbose: bool = False,
                  callback=None):
    """A model of a named configuration trained on digits, from the cache when present.

    Training is in float32; the weights are cached as flax msgpack (safe to load). With a
    ``callback`` (see :func:`train`) the model is always trained (and the cache refreshed).
    """
    import flax.serialization
    model = make_model(name, seed=seed)
    path = _cache_path(name, seed, steps, learning_rate)
    state = nnx.state(model, nnx.Param)
    if use_cache and path.exists() and callback is None:
        restored = jax.tree.map(jnp.asarray, flax.serialization.from_bytes(
            nnx.to_pure_dict(state), path.read_bytes()))
        nnx.replace_by_pure_dict(state, restored)
        nnx.update(model, state)
        if verbose:
            print(f"loaded cached weights from {path}")
        return model
    if verbose:
        print(f"training {name} on digits for {steps} steps (cached afterwards in {path}) ...")
    data = load_digits_data(image=CONFIGS[name]["kind"] == "cnn")
    train(model, data, steps=steps, learning_rate=learning_rate, callback=callback)
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(flax.serialization.to_bytes(nnx.to_pure_dict(nnx.state(model, nnx.Param))))
        tmp.replace(path)
    return model


def digits_objective(name: str = "mlp-small", *, trained: bool = True, dtype=jnp.float32,
                     seed: int = 0, num_examples: int | None = None, batch_size: int | None = None,
                     **train_kwargs) -> Objective:
    """The cross-entropy objective of a digits model on the full data set (or a prefix).

    Args:
      name: a configuration from ``CONFIGS``.
      trained: train briefly (cached) or keep the initialisation.
      dtype: the dtype the parameters and inputs are cast to for the analysis
        (``jnp.float64`` requires ``jax.config.update("jax_enable_x64", True)``).
      num_examples: use only the first ``num_examples`` examples.
      batch_size: split the data into batches of this size (the last may be smaller).
    """
    model = trained_model(name, seed=seed, **train_kwargs) if trained else make_model(name,
                                                                                      seed=seed)
    if jnp.dtype(dtype) != jnp.float32:
        _check_dtype_available(dtype)
        state = nnx.state(model)
        nnx.update(model, jax.tree.map(
            lambda a: a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a, state))
    x, y = load_digits_data(dtype=dtype, image=CONFIGS[name]["kind"] == "cnn")
    if num_examples is not None:
        x, y = x[:num_examples], y[:num_examples]
    data = (x, y)
    if batch_size is not None:
        data = [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    return Objective.from_nnx(model, cross_entropy, data)


def _check_dtype_available(dtype) -> None:
    if jnp.dtype(dtype) == jnp.float64 and not jax.config.jax_enable_x64:
        raise ValueError("float64 analysis needs x64: call jax.config.update('jax_enable_x64', "
                         "True) at start-up (or set JAX_ENABLE_X64=1).")
