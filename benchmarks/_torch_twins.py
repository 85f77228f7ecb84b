"""PyTorch twins of the digits example models, with the same weights as the JAX objective.

Layout conversions (flax NNX -> torch):

* ``nnx.Linear`` kernel ``(in, out)`` -> ``nn.Linear.weight`` ``(out, in)`` (transpose);
* ``nnx.Conv`` kernel ``HWIO`` -> ``nn.Conv2d.weight`` ``OIHW``;
* images: NHWC (JAX) -> NCHW (torch). The CNN head flattens in NHWC order in flax, so the
  torch twin permutes back to NHWC before flattening (the head weights then match as-is).

Vectors move between the two worlds with :func:`to_torch_list` / :func:`to_jax_tree`, so
eigenvectors computed by a torch library can be checked with the JAX operator.
"""

from __future__ import annotations

import jax
import numpy as np
import torch
from torch import nn

__all__ = ["Twin", "build_twin", "torch_data"]


class _MLP(nn.Module):
    def __init__(self, sizes):
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))

    def forward(self, x):
        for layer in self.layers[:-1]:
            x = torch.tanh(layer(x))
        return self.layers[-1](x)


class _CNN(nn.Module):
    def __init__(self, channels, out_features=10):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels[0], 3, padding=1)
        self.conv2 = nn.Conv2d(channels[0], channels[1], 3, padding=1)
        self.head = nn.Linear(8 * 8 * channels[1], out_features)

    def forward(self, x):                       # x: NCHW
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)   # flatten in flax's NHWC order
        return self.head(x)


def _path_key(path) -> str:
    parts = []
    for k in path:
        k = getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))
        if k != "value":
            parts.append(str(k))
    return "/".join(parts)


def _spec(cfg):
    """``[(torch_name, jax_key, kind)]`` in ``model.parameters()`` order."""
    if cfg["kind"] == "mlp":
        n = len(cfg["widths"]) + 1
        names = [(f"layers.{i}.{t}", f"layers/{i}/{j}") for i in range(n)
                 for t, j in (("weight", "kernel"), ("bias", "bias"))]
    else:
        names = [(f"{m}.{t}", f"{m}/{j}") for m in ("conv1", "conv2", "head")
                 for t, j in (("weight", "kernel"), ("bias", "bias"))]
    return [(tn, jk, "bias" if jk.endswith("bias") else ("conv" if jk.startswith("conv")
                                                          else "linear")) for tn, jk in names]


_TO_TORCH = {"bias": lambda a: a, "linear": lambda a: a.T,
             "conv": lambda a: np.transpose(a, (3, 2, 0, 1))}
_TO_JAX = {"bias": lambda a: a, "linear": lambda a: a.T,
           "conv": lambda a: np.transpose(a, (2, 3, 1, 0))}


class Twin:
    """A torch model plus the map between its parameter list and the JAX params pytree."""

    def __init__(self, model, spec, params_like):
        self.model = model
        self.spec = spec
        flat, self.treedef = jax.tree_util.tree_flatten_with_path(params_like)
        self.keys = [_path_key(p) for p, _ in flat]
        self.shapes = [np.shape(a) for _, a in flat]
        self.dtypes = [np.asarray(a).dtype for _, a in flat]

    def to_torch_list(self, tree, dtype=torch.float32):
        """A params-shaped JAX pytree -> list of torch tensors in ``parameters()`` order."""
        by_key = dict(zip(self.keys, (np.asarray(a) for a in jax.tree.leaves(tree))))
        return [torch.tensor(np.array(_TO_TORCH[kind](by_key[jk])), dtype=dtype)
                for _, jk, kind in self.spec]

    def to_jax_tree(self, tensors):
        """A list of torch tensors in ``parameters()`` order -> params-shaped JAX pytree."""
        by_key = {jk: _TO_JAX[kind](t.detach().cpu().numpy())
                  for (_, jk, kind), t in zip(self.spec, tensors)}
        leaves = [np.ascontiguousarray(by_key[k]).astype(d) for k, d in zip(self.keys,
                                                                            self.dtypes)]
        return jax.tree.unflatten(self.treedef, leaves)

    def flat_to_jax_tree(self, flat):
        """A flat torch vector (``parameters()`` order, torch layouts) -> JAX pytree."""
        tensors, offset = [], 0
        for p in self.model.parameters():
            tensors.append(flat[offset:offset + p.numel()].reshape(p.shape))
            offset += p.numel()
        return self.to_jax_tree(tensors)


def build_twin(cfg, params) -> Twin:
    """The torch twin of a digits configuration, loaded with the JAX ``params``."""
    if cfg["kind"] == "mlp":
        model = _MLP((64, *cfg["widths"], 10))
    else:
        model = _CNN(cfg["channels"])
    twin = Twin(model, _spec(cfg), params)
    with torch.no_grad():
        for p, value in zip(model.parameters(), twin.to_torch_list(params)):
            if p.shape != value.shape:
                raise ValueError(f"shape mismatch {tuple(p.shape)} vs {tuple(value.shape)}")
            p.copy_(value)
    model.eval()
    return twin


def torch_data(x, y, *, image: bool):
    """JAX data -> torch tensors (NHWC images become NCHW)."""
    x = np.asarray(x)
    if image:
        x = np.transpose(x, (0, 3, 1, 2))
    return torch.tensor(np.array(x)), torch.tensor(np.array(y), dtype=torch.int64)

