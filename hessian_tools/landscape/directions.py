"""Directions in parameter space for loss landscapes, with their provenance.

A direction is a pytree shaped like the parameters. A :class:`Directions` holds one or
more of them as a *stacked basis* (every leaf carries a leading axis of length ``num``,
as in :mod:`hessian_tools.tree`), together with what made them: the kind, the PRNG key
bits, the normalisation, the ignore rule and a fingerprint of the parameters they were
made for. A surface computed with them records that provenance, and a direction file
that does not fit a model is refused.

Kinds:

* ``random_directions``: Gaussian, filter-, layer- or un-normalised (Li et al. 2018).
* ``eigenvector_directions``: Hessian eigenvectors from :func:`hessian_tools.eigenvalues`.
* ``difference_direction``: ``b - a`` between two points (linear interpolation).
* ``trajectory_directions``: the principal components of a training trajectory
  (Li et al. 2018, Sec. 7), with the explained variance and each checkpoint's coordinates.
* ``plane_directions``: an orthonormal basis of the plane through three points
  (Garipov et al. 2018), with the three points' coordinates.

**How kernels are recognised in a plain pytree.** A pytree carries no layer types, so a
leaf is classified by its number of dimensions. A leaf with ``ndim >= 2`` is a kernel whose
*filters* are its slices along the output axis: flax stores a dense kernel as ``(in, out)``
and a convolution kernel as ``HWIO``, so with the default ``filter_axis=-1`` a filter is a
column of a dense kernel or one output channel of a convolution, as in Li et al.'s
``net_plotter.py`` (which iterates over PyTorch's leading output axis). A leaf with
``ndim <= 1`` (biases, normalisation scales and offsets) is a "1-D leaf", handled by the
``ignore`` rule. Pass ``filter_axis=0`` for PyTorch-layout trees, or a callable
``filter_axis(path, leaf) -> int | None`` to decide per leaf (``None`` marks it as 1-D,
e.g. an embedding table you want ignored).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hessian_tools import _host, tree
from hessian_tools.files import atomic_write_bytes
from hessian_tools.objective import check_finite
from hessian_tools.results import Eigenpairs, jsonable

__all__ = ["Directions", "difference_direction", "eigenvector_directions", "fingerprint",
           "load_directions", "plane_directions", "random_directions", "save_directions",
           "trajectory_directions"]

_NORMALIZATIONS = ("filter", "layer", None)
_IGNORES = ("biasbn", None)
_EPS = 1e-10          # as Li et al.: d * ||w|| / (||d|| + 1e-10)


def fingerprint(params) -> str:
    """A short hash of a parameter pytree: leaf paths, shapes and values.

    Values are hashed after rounding to float32, so a float32 checkpoint analysed in float64
    keeps its fingerprint. Costs one pass over the parameters (about 1 ms per million).

    >>> fingerprint({"w": np.ones(3)}) == fingerprint({"w": np.ones(3, np.float32)})
    True
    """
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
        arr = np.ascontiguousarray(np.asarray(leaf, dtype=np.float32))
        h.update(f"{tree.path_str(path)}:{arr.shape};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Directions:
    """One or more directions in parameter space, stacked, with their provenance.

    Attributes:
      vectors: a stacked pytree basis: every leaf has shape ``(num, *param_leaf.shape)``;
        row ``i`` is direction ``i`` (``dirs[i]`` returns it as a parameter-shaped pytree).
        ``None`` after a JSON round trip (vectors are stored by :func:`save_directions`).
      kind: ``"random"``, ``"eigenvectors"``, ``"difference"``, ``"trajectory"`` or
        ``"plane"``.
      normalization: ``"filter"``, ``"layer"`` or ``None`` (random directions).
      ignore: ``"biasbn"`` (1-D leaves zeroed) or ``None``.
      seed: the PRNG key bits (``tree.key_bits``) of random directions.
      orthogonalized: whether later directions were made orthogonal to earlier ones.
      fingerprint: :func:`fingerprint` of the parameters the directions were made for
        (their origin); ``None`` when unknown (eigenvectors without ``params``).
      explained_variance: trajectory directions: the fraction of the (centred)
        trajectory's variance along each direction.
      coordinates: trajectory: ``(num_checkpoints, num)`` each checkpoint's coordinates
        relative to the final one; plane: ``(3, 2)`` the coordinates of the three points.
      extra: anything else worth keeping (eigenvalues, distances, labels).
    """

    vectors: Any
    kind: str
    normalization: str | None = None
    ignore: str | None = None
    seed: list | None = None
    orthogonalized: bool = False
    fingerprint: str | None = None
    explained_variance: np.ndarray | None = None
    coordinates: np.ndarray | None = None
    extra: dict = dataclasses.field(default_factory=dict)

    @property
    def num(self) -> int:
        """The number of directions."""
        if self.vectors is None:
            return int(self.extra.get("num", 0))
        return int(jax.tree.leaves(self.vectors)[0].shape[0])

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, i: int):
        """Direction ``i`` as a parameter-shaped pytree."""
        if not -self.num <= i < self.num:
            raise IndexError(f"direction {i} out of range: there are {self.num}.")
        return jax.tree.map(lambda a: a[i], self.vectors)

    @property
    def vectors_fingerprint(self) -> str | None:
        """:func:`fingerprint` of the direction vectors themselves."""
        return None if self.vectors is None else fingerprint(self.vectors)

    def labels(self) -> list[str]:
        """Axis labels, one per direction (what a plot writes on its axes)."""
        if self.kind == "random":
            norm = {"filter": "filter-normalised", "layer": "layer-normalised",
                    None: "unnormalised"}[self.normalization]
            return [f"direction {i + 1} ({norm} random)" for i in range(self.num)]
        if self.kind == "eigenvectors":
            vals = self.extra.get("eigenvalues", [None] * self.num)
            return [f"eigenvector {i + 1}" + ("" if v is None else f" (λ = {v:.3g})")
                    for i, v in enumerate(vals)]
        if self.kind == "trajectory" and self.explained_variance is not None:
            return [f"PC {i + 1} ({100 * v:.1f}% of variance)"
                    for i, v in enumerate(self.explained_variance)]
        if self.kind == "difference":
            return ["t (from a to b)" if self.extra.get("unit_t") else "distance along b - a"]
        return [f"{self.kind} direction {i + 1}" for i in range(self.num)]

    def provenance(self) -> dict:
        """Everything but the vectors, JSON-ready (what surfaces and files record)."""
        d = {f.name: jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)
             if f.name != "vectors"}
        d["num"] = self.num
        d["vectors_fingerprint"] = self.vectors_fingerprint
        return d

    def to_dict(self) -> dict:
        d = self.provenance()
        d["type"] = "Directions"
        return d

    @classmethod
    def from_dict(cls, d: dict, vectors=None) -> "Directions":
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names and k != "vectors"}
        for name in ("explained_variance", "coordinates"):
            if kw.get(name) is not None:
                kw[name] = np.asarray(kw[name], np.float64)
        if vectors is None:           # no vectors to count: remember how many there were
            kw["extra"] = {**kw.get("extra", {}), "num": d.get("num", 0)}
        return cls(vectors=vectors, **kw)

    def check_matches(self, params, *, check_fingerprint: bool = True) -> None:
        """Raise ``ValueError`` unless the directions fit ``params``.

        The tree structure and every leaf shape must match (the first mismatching leaf is
        named with both shapes), every entry must be finite; with ``check_fingerprint`` and a known fingerprint, the
        parameters must also be the ones the directions were made for.
        """
        if self.vectors is None:
            raise ValueError("These directions have no vectors (a JSON round trip keeps only "
                             "their provenance). Load them with load_directions(path, params).")
        tree.check_same_structure(params, self[0], what="The directions")
        for path, leaf in jax.tree_util.tree_flatten_with_path(self.vectors)[0]:
            bad = int(np.size(leaf) - np.count_nonzero(np.isfinite(np.asarray(leaf))))
            if bad:
                raise ValueError(f"Direction leaf '{tree.path_str(path)}' has {bad} non-finite "
                                 "entries (NaN or inf): the directions are unusable. Recompute "
                                 "them from finite parameters.")
        if check_fingerprint and self.fingerprint is not None:
            got = fingerprint(params)
            if got != self.fingerprint:
                raise ValueError(
                    f"These {self.kind} directions were made for parameters with fingerprint "
                    f"{self.fingerprint}, but the parameters given have fingerprint {got}: "
                    "they belong to another checkpoint. Recompute the directions at this "
                    "point, or pass check_fingerprint=False (check_origin=False in "
                    "loss_surface) to use them here anyway.")


# ---- how leaves are classified --------------------------------------------------------------

def _filter_axis_of(filter_axis, path: str, leaf) -> int | None:
    ndim = np.ndim(leaf)
    if callable(filter_axis):
        axis = filter_axis(path, leaf)
    else:
        axis = filter_axis if ndim >= 2 else None
    if axis is None:
        return None
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool) or not -ndim <= axis < ndim:
        raise ValueError(f"filter_axis gave {axis!r} for leaf '{path}' of shape {np.shape(leaf)}; "
                         f"expected an axis in [-{ndim}, {ndim}) or None (a 1-D leaf).")
    return int(axis) % ndim


def _normalize_leaf(d, w, axis, normalization, ignore):
    """One leaf of a random direction, as Li et al.'s ``normalize_directions_for_weights``."""
    if axis is None:                                   # a 1-D leaf (bias, norm scale)
        if ignore == "biasbn":
            return jnp.zeros_like(d)
        return d if normalization is None else jnp.asarray(w, d.dtype)
    if normalization == "filter":
        others = tuple(i for i in range(np.ndim(w)) if i != axis)
        wn = jnp.sqrt(jnp.sum(jnp.square(w), axis=others, keepdims=True))
        dn = jnp.sqrt(jnp.sum(jnp.square(d), axis=others, keepdims=True))
        return d * (wn / (dn + _EPS))
    if normalization == "layer":
        return d * (jnp.linalg.norm(w) / (jnp.linalg.norm(d) + _EPS))
    return d


def _check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not one of {choices}.")


def _check_num(num, what="num"):
    if not isinstance(num, (int, np.integer)) or isinstance(num, bool) or num < 1:
        raise ValueError(f"{what}={num!r} must be a positive integer (1 or 2 for a surface).")


def _stack(vectors):
    return jax.tree.map(lambda *a: jnp.stack(a), *vectors)


def _gram_schmidt(vectors):
    out = []
    for v in vectors:
        for u in out:
            uu = tree.vdot(u, u)
            if float(uu) > 0:
                v = tree.axpy(-tree.vdot(u, v) / uu, u, v)
        out.append(v)
    return out


def random_directions(params, key, *, num: int = 2, normalization: str | None = "filter",
                      ignore: str | None = "biasbn", orthogonalize: bool = False,
                      filter_axis: int | Callable = -1) -> Directions:
    """Random Gaussian directions, normalised to the parameters' scale (Li et al. 2018).

    Each direction is drawn standard normal, then each leaf is rescaled:

    * ``normalization="filter"``: every filter ``d_f`` becomes ``d_f ||w_f|| / (||d_f|| +
      1e-10)``, so it has the norm of the same filter of the parameters (a filter is a slice
      along ``filter_axis``: a dense kernel's output column, a conv kernel's output channel);
    * ``"layer"``: each leaf gets the norm of the parameter leaf;
    * ``None``: no rescaling.

    1-D leaves (see the module docstring) are zeroed with ``ignore="biasbn"``; otherwise
    they are set to the parameter values when normalising (as Li et al.'s code does) and
    kept Gaussian without normalisation. Filter normalisation removes the scale invariance
    of ReLU-like layers, so plots of different networks are comparable.

    Args:
      params: the parameter pytree the directions are for (their origin).
      key: a ``jax.random`` key. The draw is NumPy's, seeded by the key's bits (nothing is
        compiled); the same key gives the same directions.
      num: how many directions (1 or 2 for a surface).
      normalization: ``"filter"``, ``"layer"`` or ``None``.
      ignore: ``"biasbn"`` or ``None``.
      orthogonalize: make each direction orthogonal to the earlier ones (Gram-Schmidt
        after normalisation; this moves the filter norms by about ``1/sqrt(P)`` relative).
        Two random directions in ``P`` dimensions already have cosine about ``1/sqrt(P)``.
      filter_axis: the output axis of kernels (``-1``: flax), or a callable
        ``(path, leaf) -> int | None`` (``None``: treat the leaf as 1-D).

    Returns:
      :class:`Directions` of kind ``"random"``. Cost: ``num`` parameter-sized draws.

    Raises:
      ValueError: no key, non-finite parameters (the leaf named), unknown options.

    Examples:
    >>> d = random_directions({"w": np.ones((2, 3)), "b": np.ones(3)}, jax.random.key(0))
    >>> first = d[0]
    >>> d.num, np.asarray(first.get("b")).tolist()
    (2, [0.0, 0.0, 0.0])
    """
    if key is None:
        raise ValueError("random_directions needs an explicit PRNG key: pass "
                         "key=jax.random.key(0).")
    _check_num(num)
    _check_choice("normalization", normalization, _NORMALIZATIONS)
    _check_choice("ignore", ignore, _IGNORES)
    check_finite(params)
    rng = np.random.default_rng(tree.key_bits(key))
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    axes = [_filter_axis_of(filter_axis, tree.path_str(p), w) for p, w in flat]
    vectors = []
    for _ in range(num):
        draw = jax.tree.leaves(_host.host_normal_like(rng, params))
        vectors.append(treedef.unflatten([
            _normalize_leaf(d, jnp.asarray(w), a, normalization, ignore)
            for d, (_, w), a in zip(draw, flat, axes)]))
    if orthogonalize:
        vectors = _gram_schmidt(vectors)
    return Directions(vectors=_stack(vectors), kind="random", normalization=normalization,
                      ignore=ignore, seed=tree.key_bits(key), orthogonalized=bool(orthogonalize),
                      fingerprint=fingerprint(params),
                      extra={"filter_axis": filter_axis if isinstance(filter_axis, int)
                             else "callable"})


def eigenvector_directions(eig: Eigenpairs, *, indices: Sequence[int] = (0, 1),
                           params=None) -> Directions:
    """Hessian eigenvectors as directions (unit vectors, so grid units are distances).

    Args:
      eig: the result of :func:`hessian_tools.eigenvalues` (with its vectors).
      indices: which eigenpairs, in ``eig.values`` order (for ``which="both"`` the first
        ``k`` are the largest and the last ``k`` the smallest: ``(0, -1)`` gives the top
        and the bottom one).
      params: the point the eigenvectors were computed at; gives the directions a
        fingerprint so they are checked against the surface's origin.

    Raises:
      ValueError: ``eig`` has no vectors, or an index is out of range.
    """
    if not isinstance(eig, Eigenpairs):
        raise TypeError(f"eigenvector_directions takes an Eigenpairs (ht.eigenvalues(...)), "
                        f"got {type(eig).__name__}.")
    if eig.vectors is None:
        raise ValueError("These Eigenpairs have no vectors (read back from JSON?). Compute "
                         "them with ht.eigenvalues(...) in this process.")
    n = len(eig.values)
    indices = [int(i) for i in indices]
    if not indices or any(not -n <= i < n for i in indices):
        raise ValueError(f"indices={indices} must be non-empty and within the {n} eigenpairs.")
    rows = jnp.asarray([i % n for i in indices])
    vectors = jax.tree.map(lambda a: jnp.asarray(a)[rows], eig.vectors)
    dirs = Directions(vectors=vectors, kind="eigenvectors",
                      fingerprint=None if params is None else fingerprint(params),
                      extra={"eigenvalues": [float(eig.values[i]) for i in indices],
                             "indices": indices, "operator": eig.operator})
    if params is not None:
        dirs.check_matches(params, check_fingerprint=False)
    return dirs


def difference_direction(params_a, params_b) -> Directions:
    """The direction ``b - a`` (origin ``a``): coordinate 1 of a surface reaches ``b``.

    Raises:
      ValueError: the two trees differ in structure or shapes, or hold non-finite values.
    """
    tree.check_same_structure(params_a, params_b, what="params_b")
    check_finite(params_a)
    check_finite(params_b)
    diff = tree.sub(params_b, params_a)
    return Directions(vectors=_stack([diff]), kind="difference",
                      fingerprint=fingerprint(params_a),
                      extra={"distance": float(tree.norm(diff)),
                             "fingerprint_b": fingerprint(params_b), "unit_t": True})


def _flat_rows(trees, like):
    return np.stack([np.asarray(tree.ravel(t), np.float64) for t in trees]) if trees else \
        np.zeros((0, tree.size(like)))


def _unflatten(flat, like):
    leaves, treedef = jax.tree.flatten(like)
    out, start = [], 0
    for leaf in leaves:
        n = int(np.size(leaf))
        out.append(jnp.asarray(flat[start:start + n].reshape(np.shape(leaf)),
                               jnp.result_type(leaf)))
        start += n
    return treedef.unflatten(out)


def _zero_1d(x, filter_axis=-1):
    flat, treedef = jax.tree_util.tree_flatten_with_path(x)
    return treedef.unflatten([jnp.zeros_like(a) if _filter_axis_of(filter_axis, tree.path_str(p), a)
                              is None else a for p, a in flat])


def trajectory_directions(checkpoints: Sequence, *, final=None, num: int = 2,
                          ignore: str | None = None) -> Directions:
    """The principal directions of a training trajectory (Li et al. 2018, Sec. 7).

    With ``M`` the matrix whose rows are ``checkpoint - final``, the directions are the top
    ``num`` right singular vectors of ``M`` with its column mean removed (as Li et al., who
    fit scikit-learn's PCA); ``explained_variance`` is each one's share of that centred
    matrix's squared Frobenius norm. ``coordinates`` are each checkpoint's projections
    ``<checkpoint - final, direction>`` (not centred), so the final point sits at the
    origin of a surface computed around it. Signs are fixed so that the first
    checkpoint has non-positive coordinates.

    Args:
      checkpoints: parameter pytrees along training, in order.
      final: the point the surface is centred on; default ``checkpoints[-1]``.
      num: how many directions.
      ignore: ``"biasbn"`` leaves 1-D leaves out of the PCA (zero in the directions).

    Returns:
      :class:`Directions` of kind ``"trajectory"``, unit vectors, origin ``final``.
      Memory: the differences as a ``(num_checkpoints, P)`` float64 array on the host.

    Raises:
      ValueError: fewer than ``num + 1`` distinct checkpoints, mismatched trees,
        non-finite values.
    """
    _check_num(num)
    _check_choice("ignore", ignore, _IGNORES)
    checkpoints = list(checkpoints)
    final = checkpoints[-1] if final is None and checkpoints else final
    if final is None or len(checkpoints) < num + 1:
        raise ValueError(f"trajectory_directions needs at least num + 1 = {num + 1} "
                         f"checkpoints for {num} directions, got {len(checkpoints)}.")
    check_finite(final)
    diffs = []
    for i, ck in enumerate(checkpoints):
        tree.check_same_structure(final, ck, what=f"checkpoint {i}")
        check_finite(ck)
        d = tree.sub(ck, final)
        diffs.append(_zero_1d(d) if ignore == "biasbn" else d)
    m = _flat_rows(diffs, final)
    centred = m - m.mean(axis=0)
    gram = centred @ centred.T
    lam, u = np.linalg.eigh(gram)
    lam, u = lam[::-1], u[:, ::-1]
    rank = int(np.sum(lam > 1e-12 * max(lam[0], 1e-300)))
    if rank < num:
        raise ValueError(f"The trajectory spans only {rank} dimension(s) after centring; "
                         f"cannot give {num} directions. Pass more distinct checkpoints.")
    comps = (centred.T @ u[:, :num]) / np.sqrt(lam[:num])
    comps /= np.linalg.norm(comps, axis=0)
    coords = m @ comps
    signs = np.where(coords[0] > 0, -1.0, 1.0)
    comps, coords = comps * signs, coords * signs
    vectors = _stack([_unflatten(comps[:, i], final) for i in range(num)])
    return Directions(vectors=vectors, kind="trajectory", ignore=ignore,
                      fingerprint=fingerprint(final),
                      explained_variance=lam[:num] / np.sum(lam), coordinates=coords,
                      extra={"num_checkpoints": len(checkpoints)})


def plane_directions(params_a, params_b, params_c) -> Directions:
    """An orthonormal basis of the plane through three points, origin ``a``.

    ``e1 = (b - a) / ||b - a||`` and ``e2`` is ``c - a`` made orthogonal to ``e1`` and
    normalised, so grid units are parameter-space distances; ``coordinates`` holds the
    three points: ``a = (0, 0)``, ``b = (||b - a||, 0)``, ``c = (<c - a, e1>, <c - a, e2>)``.

    Raises:
      ValueError: mismatched trees, non-finite values, or collinear points.
    """
    for name, p in (("params_b", params_b), ("params_c", params_c)):
        tree.check_same_structure(params_a, p, what=name)
    for p in (params_a, params_b, params_c):
        check_finite(p)
    u, w = tree.sub(params_b, params_a), tree.sub(params_c, params_a)
    nu = float(tree.norm(u))
    if nu == 0.0:
        raise ValueError("params_a and params_b are the same point: no plane through them.")
    e1 = tree.scale(1.0 / nu, u)
    c1 = float(tree.vdot(e1, w))
    v = tree.axpy(-c1, e1, w)
    nv = float(tree.norm(v))
    if nv <= 1e-12 * max(nu, float(tree.norm(w))):
        raise ValueError("The three points are collinear: they span no plane. Pass a third "
                         "point off the line through the first two.")
    e2 = tree.scale(1.0 / nv, v)
    return Directions(vectors=_stack([e1, e2]), kind="plane", fingerprint=fingerprint(params_a),
                      coordinates=np.array([[0.0, 0.0], [nu, 0.0], [c1, nv]]),
                      extra={"fingerprint_b": fingerprint(params_b),
                             "fingerprint_c": fingerprint(params_c)})


# ---- files --------------------------------------------------------------------------------

_META = "__meta__"


def _leaf_keys(params) -> list[str]:
    keys = [tree.path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    if len(set(keys)) != len(keys):
        raise ValueError("Two parameter leaves have the same path string; the directions "
                         "cannot be stored by path.")
    return keys


def save_directions(dirs: Directions, path) -> Path:
    """Write directions to an ``.npz`` file (atomically): one array per leaf, named by its
    path, plus the provenance as JSON. Read back with :func:`load_directions` (no pickle)."""
    if dirs.vectors is None:
        raise ValueError("These directions have no vectors to save.")
    keys = _leaf_keys(dirs[0])
    arrays = {f"leaf:{k}": np.asarray(a) for k, a in zip(keys, jax.tree.leaves(dirs.vectors))}
    arrays[_META] = np.asarray(json.dumps(dirs.to_dict()))
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())


def load_directions(path, params, *, check_fingerprint: bool = False) -> Directions:
    """Read directions written by :func:`save_directions`, checked against ``params``.

    Args:
      path: the ``.npz`` file.
      params: the model's parameter pytree: gives the tree structure and the leaf dtypes.
      check_fingerprint: also require the directions to have been made for exactly these
        parameters (the same checkpoint).

    Raises:
      ValueError: a leaf missing from the file or not in the model, a shape that differs
        (both shapes given), another number of directions per leaf, or (when checked) a
        different fingerprint.
    """
    with np.load(path, allow_pickle=False) as f:
        meta = json.loads(str(f[_META]))
        stored = {k[len("leaf:"):]: f[k] for k in f.files if k.startswith("leaf:")}
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    keys = _leaf_keys(params)
    missing, extra = sorted(set(keys) - set(stored)), sorted(set(stored) - set(keys))
    if missing or extra:
        raise ValueError(f"The directions in {path} do not match the model: leaves missing from "
                         f"the file {missing[:3]}, leaves the model lacks {extra[:3]}. They were "
                         "made for another architecture; recompute them for this model.")
    num = int(meta.get("num", 0))
    leaves = []
    for key, (_, leaf) in zip(keys, flat):
        arr = stored[key]
        if arr.shape != (num,) + np.shape(leaf):
            raise ValueError(f"The directions in {path}: leaf '{key}' has shape {arr.shape[1:]} "
                             f"(x{arr.shape[0]}), the model's has {np.shape(leaf)} (x{num} "
                             "expected). They were made for another architecture.")
        leaves.append(jnp.asarray(arr, jnp.result_type(leaf)))
    dirs = Directions.from_dict(meta, vectors=treedef.unflatten(leaves))
    dirs.check_matches(params, check_fingerprint=check_fingerprint)
    return dirs
