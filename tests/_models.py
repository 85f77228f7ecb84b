"""Small flax models as users write them (NNX with BatchNorm or LayerNorm, attention, linen),
with their data, for the tests and as ``--model tests/_models.py:FUNCTION`` targets."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx


class ConvBN(nnx.Module):
    """A 1-D CNN with BatchNorm: conv(1->4, k=3) -> BatchNorm -> relu -> dense(4)."""

    def __init__(self, *, rngs, norm="batch", length=12, channels=4, param_dtype=jnp.float32):
        self.conv = nnx.Conv(1, channels, (3,), rngs=rngs, param_dtype=param_dtype)
        if norm == "batch":
            self.norm = nnx.BatchNorm(channels, rngs=rngs, param_dtype=param_dtype)
        else:
            self.norm = nnx.LayerNorm(channels, rngs=rngs, param_dtype=param_dtype)
        self.head = nnx.Linear(length * channels, 4, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x):
        x = jax.nn.relu(self.norm(self.conv(x)))
        return self.head(x.reshape(x.shape[0], -1))


class Attention(nnx.Module):
    """One self-attention block over a sequence of 6 tokens, mean-pooled to 3 classes."""

    def __init__(self, *, rngs, param_dtype=jnp.float32):
        self.embed = nnx.Linear(2, 8, rngs=rngs, param_dtype=param_dtype)
        self.attn = nnx.MultiHeadAttention(num_heads=2, in_features=8, decode=False, rngs=rngs,
                                           param_dtype=param_dtype)
        self.head = nnx.Linear(8, 3, rngs=rngs, param_dtype=param_dtype)

    def __call__(self, x):
        h = self.embed(x)
        return self.head(self.attn(h).mean(axis=1))


def cross_entropy(logits, batch):
    return optax.softmax_cross_entropy_with_integer_labels(logits, batch[1]).mean()


def signal_data(n=96, length=12, seed=0, dtype=np.float32):
    """A 1-D signal classification task (4 classes), inputs ``(n, length, 1)``."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, length, 1)) * 2.0 + 0.5
    y = (x[:, :3, 0].sum(1) > 1.5).astype(np.int32) + 2 * (x[:, -4:, 0].mean(1) > 0.5)
    return jnp.asarray(x.astype(dtype)), jnp.asarray(y.astype(np.int32))


def trained_conv_bn(norm="batch", steps=60, seed=0):
    """A ConvBN trained briefly with Adam (BatchNorm in training mode), then set to eval."""
    model = ConvBN(rngs=nnx.Rngs(seed), norm=norm)
    x, y = signal_data()
    opt = nnx.Optimizer(model, optax.adam(3e-2), wrt=nnx.Param)

    @nnx.jit
    def step(model, opt):
        loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(x), (x, y)))(model)
        opt.update(model, grads)
        return loss

    model.train()
    for _ in range(steps):
        step(model, opt)
    model.eval()
    return model, opt


def make_conv_bn():
    """``--model`` target: ``(model, loss_fn, data)`` of a freshly initialised ConvBN."""
    return ConvBN(rngs=nnx.Rngs(0)), cross_entropy, signal_data()
