"""Loss landscapes: directions, surfaces, interpolation, storage (closed forms, float64)."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hessian_tools import tree
from hessian_tools.examples import digits
from hessian_tools.landscape.evaluate import metric_barrier
from hessian_tools.landscape import (Directions, InterpolationPath, LossSurface, accuracy,
                                     barrier, difference_direction, eigenvector_directions,
                                     evaluate_points, fingerprint, interpolate, load_directions,
                                     loss_surface, on_outputs, plane, plane_directions,
                                     plot_curvature_map, plot_interpolation, plot_surface,
                                     plot_trajectory, random_directions, read_surface_file,
                                     save_directions, trajectory_directions)
from hessian_tools.landscape import evaluate as evaluate_module
from hessian_tools.landscape.affine import affine_split
from hessian_tools.landscape.curvature import CurvatureMap, curvature_map, snake_order
from hessian_tools.objective import Objective

# ---- a quadratic with a known Hessian ---------------------------------------------------------

SHAPES = {"w": (3, 2), "b": (4,)}
DIM = 10


def _flat(p):
    return jnp.concatenate([p["b"].reshape(-1), p["w"].reshape(-1)])   # jax.tree order: b, w


def _quadratic(seed=0):
    rng = np.random.default_rng(seed)
    g = rng.normal(size=(DIM, DIM))
    a = g @ g.T / DIM + 0.1 * np.eye(DIM)                               # SPD Hessian
    z = rng.normal(size=(13, DIM))

    def loss(params, batch):
        r = _flat(params)[None, :] - batch
        return 0.5 * jnp.mean(jnp.einsum("ni,ij,nj->n", r, a, r))

    data = [jnp.asarray(z[:5]), jnp.asarray(z[5:10]), jnp.asarray(z[10:])]   # ragged: 5, 5, 3
    params = {"w": jnp.asarray(rng.normal(size=SHAPES["w"])),
              "b": jnp.asarray(rng.normal(size=SHAPES["b"]))}

    def exact(x):                     # the dataset mean, in closed form
        r = x[None, :] - z
        return 0.5 * np.mean(np.einsum("ni,ij,nj->n", r, a, r))
    return Objective(loss, params, data), exact


def test_quadratic_surface_equals_closed_form():
    obj, exact = _quadratic()
    dirs = random_directions(obj.params, jax.random.key(1), normalization=None, ignore=None)
    xs, ys = np.linspace(-2, 2, 7), np.linspace(-1, 3, 5)
    surf = loss_surface(obj, dirs, grid=(xs, ys))
    p0, d1, d2 = (np.asarray(_flat(t)) for t in (obj.params, dirs[0], dirs[1]))
    want = np.array([[exact(p0 + x * d1 + y * d2) for y in ys] for x in xs])
    np.testing.assert_allclose(surf.values, want, rtol=1e-10, atol=0)
    assert surf.origin_loss == pytest.approx(exact(p0), rel=1e-12)
    assert surf.shape == (7, 5) and surf.num_evaluations == 35      # the origin is on the grid
    assert str(surf).startswith("LossSurface(7 x 5 grid over [-2, 2], [-1, 3]; loss at the "
                                "origin") and "0 missing; 35 evaluations" in str(surf)
    one = loss_surface(obj, Directions(vectors=jax.tree.map(lambda a: a[:1], dirs.vectors),
                                       kind="custom"), grid=(xs,))
    np.testing.assert_allclose(one.values, want[:, 0] * 0 + [exact(p0 + x * d1) for x in xs],
                               rtol=1e-10)


def test_every_plan_gives_the_same_surface():
    obj, exact = _quadratic()
    dirs = random_directions(obj.params, jax.random.key(2), normalization=None, ignore=None)
    coords = np.random.default_rng(0).normal(size=(11, 2))
    p0, d1, d2 = (np.asarray(_flat(t)) for t in (obj.params, dirs[0], dirs[1]))
    want = [exact(p0 + a * d1 + b * d2) for a, b in coords]
    streamed = Objective(obj.loss.fn.fn, obj.params, lambda: iter(obj.data))
    for o, kw in ((obj, {}), (obj, dict(vmap_width=3, chunk_size=4)), (streamed, {})):
        loss, metric = evaluate_points(o, dirs, coords, **kw)
        assert metric is None
        np.testing.assert_allclose(loss, want, rtol=1e-10)
    plan = evaluate_module._plan(obj, 11, 4, 3)
    assert (plan.kind, plan.width, plan.chunk, plan.affine) == ("compiled", 3, 4, False)
    fn = evaluate_module._values_fn(obj, None)
    assert evaluate_module._plan(streamed, 11, None, None, fn=fn).affine      # r = x - z
    for o in (obj, streamed):
        for affine in (False, True):
            ev = evaluate_module._Evaluator(o, o.params, dirs.vectors, num_points=11)
            ev.plan = evaluate_module._Plan(ev.plan.kind, 2, 11, affine)
            np.testing.assert_allclose(ev(coords)[:, 0], want, rtol=1e-10)


def test_affine_split_shares_the_first_layer_only():
    obj = _mlp_objective(num_examples=20)
    fn = evaluate_module._values_fn(obj, accuracy)
    split = affine_split(fn, obj.params, obj.groups.first_batch_spec)
    assert split.num_shared_products == 1
    names = [(e.primitive.name, k) for e, k in zip(split.closed.jaxpr.eqns, split.kinds)]
    assert names[:4] == [("dot_general", "affine"), ("reshape", "affine"), ("add", "affine"),
                         ("tanh", "general")]
    decayed = Objective(lambda p, b: obj.loss(p, b) + 1e-3 * sum(
        jnp.sum(a ** 2) for a in jax.tree.leaves(p)), obj.params, obj.data)
    split = affine_split(evaluate_module._values_fn(decayed, None), obj.params,
                         obj.groups.first_batch_spec)
    assert split.num_shared_products == 1                 # the squares are not affine


class _NormedMLP(nnx.Module):
    def __init__(self, rngs):
        self.a = nnx.Linear(64, 8, rngs=rngs, param_dtype=jnp.float64)
        self.norm = nnx.BatchNorm(8, rngs=rngs, param_dtype=jnp.float64)
        self.b = nnx.Linear(8, 10, rngs=rngs, param_dtype=jnp.float64)

    def __call__(self, x):
        return self.b(jnp.tanh(self.norm(self.a(x))))


def test_held_state_travels_through_the_affine_split():
    x, y = digits.load_digits_data(dtype=jnp.float64)
    model = _NormedMLP(nnx.Rngs(0))
    stats = model.norm.mean[...].dtype                      # held fixed, not zero
    model.norm.mean[...] = jnp.linspace(-1, 1, 8, dtype=stats)
    model.norm.var[...] = jnp.linspace(0.5, 2, 8, dtype=stats)
    obj = Objective.from_nnx(model, digits.cross_entropy, (x[:64], y[:64]))
    dirs = random_directions(obj.params, jax.random.key(17))
    xs, ys = np.array([-0.5, 0.5]), np.array([0.0, 0.7])
    surf = loss_surface(obj, dirs, grid=(xs, ys))
    assert surf.plan["affine"]
    np.testing.assert_allclose(surf.values, _plain_loop(obj, dirs, xs, ys), rtol=1e-11)


# ---- filter normalisation -------------------------------------------------------------------

def _layered_params(rng):
    return {"dense": {"kernel": jnp.asarray(rng.normal(size=(5, 7))),
                      "bias": jnp.asarray(rng.normal(size=7))},
            "conv": {"kernel": jnp.asarray(rng.normal(size=(3, 3, 2, 4))),
                     "scale": jnp.asarray(rng.normal(size=4))}}


def _filter_norms(a, axis):
    a = np.moveaxis(np.asarray(a), axis, -1)
    return np.linalg.norm(a.reshape(-1, a.shape[-1]), axis=0)


def test_filter_normalisation_gives_each_filter_the_parameters_norm():
    params = _layered_params(np.random.default_rng(0))
    params["conv"]["kernel"] = params["conv"]["kernel"].at[..., 1].set(0.0)   # a dead filter
    dirs = random_directions(params, jax.random.key(3), num=2)
    for d in (dirs[0], dirs[1]):
        for layer in ("dense", "conv"):
            np.testing.assert_allclose(_filter_norms(d[layer]["kernel"], -1),
                                       _filter_norms(params[layer]["kernel"], -1),
                                       rtol=1e-9, atol=1e-12)
        assert not np.any(np.asarray(d["dense"]["bias"]))           # ignored 1-D leaves
        assert not np.any(np.asarray(d["conv"]["scale"]))
    assert not np.allclose(dirs[0]["dense"]["kernel"], dirs[1]["dense"]["kernel"])
    kept = random_directions(params, jax.random.key(3), num=1, ignore=None)
    np.testing.assert_array_equal(kept[0]["dense"]["bias"], params["dense"]["bias"])
    layer = random_directions(params, jax.random.key(3), num=1, normalization="layer")
    assert float(jnp.linalg.norm(layer[0]["dense"]["kernel"])) == pytest.approx(
        float(jnp.linalg.norm(params["dense"]["kernel"])), rel=1e-9)
    raw = random_directions(params, jax.random.key(3), num=1, normalization=None, ignore=None)
    assert np.any(np.asarray(raw[0]["dense"]["bias"]) != np.asarray(params["dense"]["bias"]))


def test_filter_axis_torch_layout_and_predicate():
    params = _layered_params(np.random.default_rng(1))
    rows = random_directions(params, jax.random.key(4), num=1, filter_axis=0)
    np.testing.assert_allclose(_filter_norms(rows[0]["dense"]["kernel"], 0),
                               _filter_norms(params["dense"]["kernel"], 0), rtol=1e-9)
    skip_conv = random_directions(params, jax.random.key(4), num=1,
                                  filter_axis=lambda path, leaf: None if path.startswith("conv")
                                  else (-1 if leaf.ndim >= 2 else None))
    assert not np.any(np.asarray(skip_conv[0]["conv"]["kernel"]))
    with pytest.raises(ValueError, match="filter_axis gave 5 for leaf 'conv/kernel'"):
        random_directions(params, jax.random.key(4), filter_axis=lambda p, leaf: 5)


def test_orthogonalize_and_key_determinism():
    params = _layered_params(np.random.default_rng(2))
    a = random_directions(params, jax.random.key(5), orthogonalize=True)
    b = random_directions(params, jax.random.key(5), orthogonalize=True)
    assert abs(float(tree.vdot(a[0], a[1]))) < 1e-12 * float(tree.norm(a[0]) * tree.norm(a[1]))
    np.testing.assert_array_equal(a.vectors["dense"]["kernel"], b.vectors["dense"]["kernel"])
    assert a.seed == tree.key_bits(jax.random.key(5)) and a.orthogonalized


# ---- a network: the surface equals a plain loop -------------------------------------------------

def _mlp_objective(**kw):
    return digits.digits_objective("mlp-tiny", trained=False, dtype=jnp.float64, **kw)


def _plain_loop(obj, dirs, xs, ys, metric=None):
    loss = jax.jit(lambda p, b: obj.loss(p, b))
    out = np.zeros((len(xs), len(ys)))
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            p = jax.tree.map(lambda o, a, b: o + x * a + y * b, obj.params, dirs[0], dirs[1])
            total = sum(float(loss(p, b)) * n for b, n in obj.batches())
            out[i, j] = total / obj.num_examples
    return out


def test_network_surface_equals_a_plain_loop():
    obj = _mlp_objective(num_examples=300, batch_size=128)       # batches 128, 128, 44
    dirs = random_directions(obj.params, jax.random.key(6))
    xs, ys = np.linspace(-1, 1, 4), np.linspace(-0.5, 1.0, 3)
    surf = loss_surface(obj, dirs, grid=(xs, ys), metric=accuracy)
    np.testing.assert_allclose(surf.values, _plain_loop(obj, dirs, xs, ys), rtol=1e-11)
    x, y = digits.load_digits_data(dtype=jnp.float64)
    i, j = 3, 1
    p = jax.tree.map(lambda o, a, b: o + xs[i] * a + ys[j] * b, obj.params, dirs[0], dirs[1])
    logits = obj.predict(p, (x[:300], y[:300]))
    assert surf.metric[i, j] == pytest.approx(float(np.mean(np.argmax(logits, -1) == y[:300])))
    assert surf.metric_name == "accuracy" and surf.plan["kind"] == "compiled"


def test_conv_surface_runs_one_point_per_step_on_the_cpu_and_equals_a_loop():
    obj = digits.digits_objective("cnn", trained=False, dtype=jnp.float64, num_examples=40)
    dirs = random_directions(obj.params, jax.random.key(7))
    xs, ys = np.array([-0.5, 0.5]), np.array([0.0, 1.0])
    surf = loss_surface(obj, dirs, grid=(xs, ys))
    assert surf.plan["affine"] and (surf.plan["vmap_width"] == 1 or jax.default_backend() != "cpu")
    np.testing.assert_allclose(surf.values, _plain_loop(obj, dirs, xs, ys), rtol=1e-11)


def test_params_metric_and_output_metric_agree():
    obj = _mlp_objective(num_examples=100)
    dirs = random_directions(obj.params, jax.random.key(8), num=1)
    t = np.linspace(-1, 1, 3)
    _, m1 = evaluate_points(obj, dirs, t, metric=on_outputs(lambda out, b: jnp.mean(out ** 2)))
    _, m2 = evaluate_points(obj, dirs, t, metric=lambda p, b: jnp.mean(obj.predict(p, b) ** 2))
    np.testing.assert_allclose(m1, m2, rtol=1e-12)
    plain = Objective(obj.loss, obj.params, obj.data)
    with pytest.raises(ValueError, match="needs an objective with predict"):
        evaluate_points(plain, dirs, t, metric=accuracy)


# ---- interpolation and barriers ------------------------------------------------------------------

def test_barrier_of_a_convex_function_is_zero_and_a_double_well_has_its_closed_form():
    obj, _ = _quadratic()
    b = jax.tree.map(lambda a: -2.0 * a + 1.0, obj.params)
    path = interpolate(obj, obj.params, b, num_points=11)
    assert path.barrier == 0.0 and path.barrier_t in (0.0, 1.0)
    assert path.loss[0] == pytest.approx(float(obj.loss(obj.params, jnp.concatenate(obj.data))))
    well = Objective(lambda p, batch: jnp.mean((p["x"] ** 2 - 1.0) ** 2 + 0 * batch),
                     {"x": jnp.asarray(-1.0)}, jnp.zeros(3))
    path = interpolate(well, {"x": jnp.asarray(-1.0)}, {"x": jnp.asarray(1.0)}, num_points=21)
    assert path.barrier == pytest.approx(1.0, abs=1e-14) and path.barrier_t == 0.5
    assert path.distance == pytest.approx(2.0) and path.num_evaluations >= 21
    np.testing.assert_allclose(path.loss, (np.linspace(-1, 1, 21) ** 2 - 1) ** 2, atol=1e-14)
    assert barrier([0.0, 0.5, 1.0], [1.0, 0.0, 3.0]) == (0.0, 0.0)


def test_interpolation_beyond_the_ends_keeps_the_barrier_of_the_segment():
    well = Objective(lambda p, batch: jnp.mean((p["x"] ** 2 - 1.0) ** 2 + 0 * batch),
                     {"x": jnp.asarray(-1.0)}, jnp.zeros(3))
    a, b = {"x": jnp.asarray(-1.0)}, {"x": jnp.asarray(1.0)}
    path = interpolate(well, a, b, num_points=7, span=(-1.0, 2.0))   # grid misses 0 and 1
    assert path.t[0] == -1.0 and path.t[-1] == 2.0 and {0.0, 1.0} <= set(path.t)
    x = -1.0 + 2.0 * path.t
    np.testing.assert_allclose(path.loss, (x ** 2 - 1) ** 2, atol=1e-14)
    # outside [0, 1] the loss rises to 64, but the barrier is that of the segment
    assert path.barrier == pytest.approx(1.0, abs=1e-14) and path.barrier_t == 0.5
    text = str(path)
    assert "t in [-1, 2]" in text and "barrier 1 at t=0.5" in text and "[" in text
    assert len(text) < 200                                  # no arrays dumped
    for bad in [(0.1, 1.0), (0.0, 0.9), (0.0, float("inf")), "ab", 3]:
        with pytest.raises(ValueError, match="span"):
            interpolate(well, a, b, span=bad)


def test_interpolation_with_a_metric_and_json_round_trip():
    obj = _mlp_objective(num_examples=200)
    b = jax.tree.map(lambda a: 0.5 * a, obj.params)
    path = interpolate(obj, obj.params, b, num_points=5, metric=accuracy)
    assert path.metric.shape == (5,) and path.metric_name == "accuracy"
    # accuracy is higher-is-better: its barrier is the largest drop below the chord
    chord = (1 - path.t) * path.metric[0] + path.t * path.metric[-1]
    assert path.metric_barrier == pytest.approx(np.max(chord - path.metric), abs=1e-12)
    assert metric_barrier([0.0, 0.5, 1.0], [1.0, 0.6, 0.9], accuracy) == pytest.approx(0.35)
    assert metric_barrier([0.0, 0.5, 1.0], [1.0, 0.6, 0.9], lambda p, b: 0.0) == 0.0
    assert metric_barrier([0.0, 0.5, 1.0], [0.0, 0.4, 0.1], lambda p, b: 0.0) == \
        pytest.approx(0.35)                          # an error-like metric: a rise
    back = InterpolationPath.from_json(path.to_json())
    np.testing.assert_array_equal(back.loss, path.loss)
    assert back.barrier == path.barrier and back.fingerprint_b == fingerprint(b)


def test_plane_through_three_points():
    obj, exact = _quadratic()
    a = obj.params
    b = jax.tree.map(lambda x: x + 1.0, a)
    c = jax.tree.map(lambda x: x - 0.5 * x ** 2, a)
    dirs = plane_directions(a, b, c)
    assert abs(float(tree.vdot(dirs[0], dirs[1]))) < 1e-12
    cb, cc = dirs.coordinates[1], dirs.coordinates[2]
    surf = plane(obj, a, b, c, grid=(np.array([0.0, cb[0], cc[0]]), np.array([0.0, cc[1]])))
    assert surf.values[0, 0] == pytest.approx(exact(np.asarray(_flat(a))), rel=1e-12)
    assert surf.values[1, 0] == pytest.approx(exact(np.asarray(_flat(b))), rel=1e-10)
    assert surf.values[2, 1] == pytest.approx(exact(np.asarray(_flat(c))), rel=1e-10)
    auto = plane(obj, a, b, c, grid=4)
    assert auto.shape == (4, 4) and auto.grid[0][0] < 0 < cb[0] < auto.grid[0][-1]
    with pytest.raises(ValueError, match="collinear"):
        plane_directions(a, b, jax.tree.map(lambda x: x + 2.0, a))


# ---- directions of other kinds ------------------------------------------------------------------

def test_trajectory_pca_matches_an_svd_and_projects_the_checkpoints():
    rng = np.random.default_rng(3)
    final = {"w": jnp.asarray(rng.normal(size=(4, 3))), "b": jnp.asarray(rng.normal(size=3))}
    u, v = (tree.normal_like(jax.random.key(k), final) for k in (10, 11))
    steps = np.linspace(1, 0, 8)
    cks = [jax.tree.map(lambda f, a, b: f + 3 * s * a + s ** 2 * b + 1e-3 * s * np.sin(f), final,
                        u, v) for s in steps]
    traj = trajectory_directions(cks)
    m = np.stack([np.asarray(tree.ravel(tree.sub(ck, final))) for ck in cks])
    mc = m - m.mean(0)
    _, s, vt = np.linalg.svd(mc, full_matrices=False)
    np.testing.assert_allclose(traj.explained_variance, s[:2] ** 2 / np.sum(s ** 2), rtol=1e-9)
    basis = np.stack([np.asarray(tree.ravel(traj[i])) for i in range(2)])
    np.testing.assert_allclose(np.abs(basis @ vt[:2].T), np.eye(2), atol=1e-9)
    np.testing.assert_allclose(traj.coordinates, m @ basis.T, atol=1e-12)
    assert np.all(traj.coordinates[0] <= 0) and np.allclose(traj.coordinates[-1], 0)
    assert traj.fingerprint == fingerprint(final) and "PC 1 (" in traj.labels()[0]
    with pytest.raises(ValueError, match="at least num \\+ 1 = 3 checkpoints"):
        trajectory_directions(cks[:2])


def test_eigenvector_directions_give_the_curvature_along_them():
    import hessian_tools as ht
    obj, _ = _quadratic()
    eig = ht.eigenvalues(ht.hessian(obj), k=1, which="both", key=jax.random.key(0))
    dirs = eigenvector_directions(eig, indices=(0, -1), params=obj.params)
    h = 1e-2
    surf = loss_surface(obj, dirs, grid=(np.array([-h, 0.0, h]),) * 2)
    curv_top = (surf.values[0, 1] - 2 * surf.values[1, 1] + surf.values[2, 1]) / h ** 2
    curv_bottom = (surf.values[1, 0] - 2 * surf.values[1, 1] + surf.values[1, 2]) / h ** 2
    assert curv_top == pytest.approx(eig.values[0], rel=1e-6)
    assert curv_bottom == pytest.approx(eig.values[-1], rel=1e-6)
    assert "λ =" in dirs.labels()[0]


def test_difference_direction_reaches_b():
    obj, exact = _quadratic()
    b = jax.tree.map(lambda x: x * 3.0, obj.params)
    surf = loss_surface(obj, difference_direction(obj.params, b), grid=(np.array([0.0, 1.0]),))
    assert surf.values[1] == pytest.approx(exact(3 * np.asarray(_flat(obj.params))), rel=1e-12)


# ---- files: directions and resumable surfaces -----------------------------------------------------

def test_direction_files_round_trip_and_refuse_another_model(tmp_path):
    obj = _mlp_objective()
    dirs = random_directions(obj.params, jax.random.key(9))
    path = save_directions(dirs, tmp_path / "dirs.npz")
    back = load_directions(path, obj.params, check_fingerprint=True)
    np.testing.assert_array_equal(back.vectors["layers"][0]["kernel"],
                                  dirs.vectors["layers"][0]["kernel"])
    assert back.provenance() == dirs.provenance()
    other = nnx.state(digits.MLP((17,), rngs=nnx.Rngs(0)), nnx.Param)
    with pytest.raises(ValueError, match="leaf 'layers/0/bias' has shape \\(16,\\).*model's has "
                       "\\(17,\\)"):
        load_directions(path, other)
    cnn = digits.digits_objective("cnn", trained=False, num_examples=8)
    with pytest.raises(ValueError, match="leaves missing from the file \\['conv1/bias'"):
        load_directions(path, cnn.params)
    moved = jax.tree.map(lambda a: a + 1.0, obj.params)
    load_directions(path, moved)                                   # shapes fit: accepted
    with pytest.raises(ValueError, match="another checkpoint"):
        load_directions(path, moved, check_fingerprint=True)


def _interrupt_after(monkeypatch, chunks):
    calls = {"n": 0}
    original = evaluate_module._Evaluator.__call__

    def flaky(self, coords):
        if calls["n"] >= chunks:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(self, coords)
    monkeypatch.setattr(evaluate_module._Evaluator, "__call__", flaky)


def test_a_resumed_surface_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    obj = _mlp_objective(num_examples=200)
    dirs = random_directions(obj.params, jax.random.key(10))
    grid = (np.linspace(-1, 1, 9), np.linspace(-1, 1, 7))
    full = loss_surface(obj, dirs, grid=grid, metric=accuracy, chunk_size=16)
    path = tmp_path / "surf.npz"
    with monkeypatch.context() as m:
        _interrupt_after(m, 2)
        with pytest.raises(KeyboardInterrupt):
            loss_surface(obj, dirs, grid=grid, metric=accuracy, chunk_size=16, path=path)
    partial = read_surface_file(path)
    assert partial["done"].sum() == 32 and not partial["origin_done"]
    resumed = loss_surface(obj, dirs, grid=grid, metric=accuracy, chunk_size=16, path=path)
    np.testing.assert_array_equal(resumed.values, full.values)
    np.testing.assert_array_equal(resumed.metric, full.metric)
    assert resumed.origin_loss == full.origin_loss
    assert resumed.num_reused == 32 and resumed.num_evaluations == 63 - 32 + 1
    again = loss_surface(obj, dirs, grid=grid, metric=accuracy, path=path)
    assert again.num_evaluations == 0 and again.num_reused == 63 + 1
    np.testing.assert_array_equal(again.values, full.values)


def test_a_stored_surface_made_otherwise_is_refused(tmp_path):
    obj = _mlp_objective(num_examples=100)
    dirs = random_directions(obj.params, jax.random.key(11))
    grid = (np.linspace(-1, 1, 3),) * 2
    path = tmp_path / "surf.npz"
    loss_surface(obj, dirs, grid=grid, path=path)
    with pytest.raises(ValueError, match="grid: the stored axes differ"):
        loss_surface(obj, dirs, grid=(np.linspace(-1, 1, 3), np.linspace(-2, 2, 3)), path=path)
    other = random_directions(obj.params, jax.random.key(12))
    with pytest.raises(ValueError, match="other settings(.|\n)*directions: stored"):
        loss_surface(obj, other, grid=grid, path=path)
    with pytest.raises(ValueError, match="metric: stored null, now \"accuracy\""):
        loss_surface(obj, dirs, grid=grid, path=path, metric=accuracy)
    moved = obj.with_params(jax.tree.map(lambda a: a * 1.01, obj.params))
    with pytest.raises(ValueError, match="origin_fingerprint"):
        loss_surface(moved, dirs, grid=grid, path=path, check_origin=False)
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable surface file"):
        loss_surface(obj, dirs, grid=grid, path=tmp_path / "junk.npz")


# ---- bad input ---------------------------------------------------------------------------------

def test_bad_input_gets_clear_errors():
    obj = _mlp_objective(num_examples=50)
    dirs = random_directions(obj.params, jax.random.key(13))
    with pytest.raises(ValueError, match="explicit PRNG key"):
        random_directions(obj.params, None)
    with pytest.raises(ValueError, match="normalization='fliter' is not one of"):
        random_directions(obj.params, jax.random.key(0), normalization="fliter")
    with pytest.raises(ValueError, match="axis 0 must be a non-empty"):
        loss_surface(obj, dirs, grid=(np.array([]), np.linspace(-1, 1, 3)))
    with pytest.raises(ValueError, match="grid has 1 axes but the directions hold 2"):
        loss_surface(obj, dirs, grid=(np.linspace(-1, 1, 3),))
    with pytest.raises(ValueError, match="non-finite coordinates"):
        loss_surface(obj, dirs, grid=(np.array([0.0, np.nan]),) * 2)
    small = digits.digits_objective("mlp-small", trained=False, dtype=jnp.float64,
                                    num_examples=50)
    with pytest.raises(ValueError, match="missing leaves \\['layers/2/bias', 'layers/2/kern"):
        loss_surface(small, dirs, grid=(np.zeros(1),) * 2)
    wider = Objective.from_nnx(digits.MLP((17,), rngs=nnx.Rngs(0), param_dtype=jnp.float64),
                               digits.cross_entropy, obj.data)
    with pytest.raises(ValueError, match="The directions: leaf 'layers/0/bias' has shape "
                       "\\(16,\\), expected \\(17,\\)"):
        loss_surface(wider, dirs, grid=(np.zeros(1),) * 2)
    moved = obj.with_params(jax.tree.map(lambda a: a + 0.1, obj.params))
    with pytest.raises(ValueError, match="belong to another checkpoint"):
        loss_surface(moved, dirs, grid=(np.zeros(1),) * 2)
    loss_surface(moved, dirs, grid=(np.zeros(1),) * 2, check_origin=False)
    bad = jax.tree.map(lambda a: a.at[0].set(jnp.nan) if a.ndim == 1 else a, obj.params)
    with pytest.raises(ValueError, match="Parameter leaf 'layers/0/bias'.*non-finite"):
        random_directions(bad, jax.random.key(0))
    with pytest.raises(ValueError, match="non-finite"):
        interpolate(obj, obj.params, bad)
    nan_dirs = Directions(vectors=jax.tree.map(lambda a: a.at[0].set(jnp.inf), dirs.vectors),
                          kind="custom")
    with pytest.raises(ValueError, match="Direction leaf 'layers/0/bias' has 16 non-finite"):
        loss_surface(obj, nan_dirs, grid=(np.zeros(1),) * 2)
    with pytest.raises(ValueError, match="num_points=1 must be an integer >= 2"):
        interpolate(obj, obj.params, obj.params, num_points=1)
    with pytest.raises(TypeError, match="dirs must be a Directions"):
        loss_surface(obj, dirs.vectors, grid=(np.zeros(1),) * 2)
    with pytest.raises(ValueError, match="coords must have shape"):
        evaluate_points(obj, dirs, np.zeros((3, 3)))


def test_surface_json_round_trip_keeps_missing_values_as_nan():
    surf = LossSurface(values=np.array([[1.0, np.nan], [2.0, 3.0]]),
                       grid=(np.array([0.0, 1.0]), np.array([-1.0, 1.0])), origin_loss=1.0,
                       num_evaluations=3, directions={"kind": "random"},
                       origin_fingerprint="abc")
    text = surf.to_json()
    assert "NaN" not in text and json.loads(text)["values"][0][1] is None
    back = LossSurface.from_json(text)
    np.testing.assert_array_equal(back.values, surf.values)
    assert back.grid[1].tolist() == [-1.0, 1.0] and back.ndim == 2


# ---- curvature maps ----------------------------------------------------------------------------

def _small_net(num_examples=200):
    x, y = digits.load_digits_data(dtype=jnp.float64)
    model = digits.MLP((4,), rngs=nnx.Rngs(0), param_dtype=jnp.float64)
    return Objective.from_nnx(model, digits.cross_entropy, (x[:num_examples], y[:num_examples]))


def test_curvature_map_equals_dense_solves_at_each_point():
    import hessian_tools as ht
    obj = _small_net()
    dirs = random_directions(obj.params, jax.random.key(14))
    grid = (np.linspace(-1, 1, 3), np.array([-0.5, 0.5]))
    cmap = curvature_map(obj, dirs, grid=grid, key=jax.random.key(1), tol=1e-8)
    assert str(cmap).startswith("CurvatureMap(") and "points converged" in str(cmap)
    assert len(str(cmap)) < 250
    cold = curvature_map(obj, dirs, grid=grid, key=jax.random.key(2), tol=1e-8,
                         warm_start=False)
    for i, x in enumerate(grid[0]):
        for j, y in enumerate(grid[1]):
            p = jax.tree.map(lambda o, a, b: o + x * a + y * b, obj.params, dirs[0], dirs[1])
            w = np.linalg.eigvalsh(ht.dense_hessian(obj.with_params(p)))
            for m in (cmap, cold):
                assert m.lambda_max[i, j] == pytest.approx(w[-1], rel=1e-9)
                assert m.lambda_min[i, j] == pytest.approx(w[0], abs=1e-9 * w[-1])
            assert cmap.ratio[i, j] == pytest.approx(abs(w[0] / w[-1]), rel=1e-8)
    assert cmap.converged.all() and cmap.num_matvecs == cmap.point_matvecs.sum()
    assert np.all(cmap.residuals <= 1e-8 * np.abs(cmap.lambda_max)[..., None] * 1.0001)
    back = CurvatureMap.from_json(cmap.to_json())
    np.testing.assert_array_equal(back.point_matvecs, cmap.point_matvecs)
    assert back.converged.dtype == bool and back.order == "snake" and cold.order == "independent"


def test_warm_started_curvature_map_spends_fewer_products_on_a_fine_grid():
    obj = _small_net(100)
    dirs = random_directions(obj.params, jax.random.key(15), num=1)
    grid = (np.linspace(-0.05, 0.05, 9),)
    warm = curvature_map(obj, dirs, grid=grid, key=jax.random.key(3), tol=1e-4)
    cold = curvature_map(obj, dirs, grid=grid, key=jax.random.key(3), tol=1e-4,
                         warm_start=False)
    np.testing.assert_allclose(warm.lambda_max, cold.lambda_max, rtol=1e-6)
    assert warm.num_matvecs < 0.75 * cold.num_matvecs          # measured: 75 against 123
    assert snake_order((3, 2)).tolist() == [0, 1, 3, 2, 4, 5]
    with pytest.raises(ValueError, match="explicit PRNG key"):
        curvature_map(obj, dirs, grid=grid, key=None)


# ---- plots ------------------------------------------------------------------------------------

def test_plots_draw_labelled_axes_and_refuse_mismatched_inputs():
    import matplotlib.pyplot as plt
    obj, _ = _quadratic()
    dirs = random_directions(obj.params, jax.random.key(16), normalization=None, ignore=None)
    surf = loss_surface(obj, dirs, grid=(np.linspace(-1, 1, 5), np.linspace(-1, 1, 4)))
    for kind in ("contour", "filled"):
        ax = plot_surface(surf, kind=kind)
        assert "direction 1" in ax.get_xlabel() and "direction 2" in ax.get_ylabel()
    ax = plot_surface(surf, kind="3d")
    assert ax.name == "3d"
    with pytest.raises(ValueError, match="needs a 3-D axes"):
        plot_surface(surf, kind="3d", ax=plt.figure().add_subplot())
    with pytest.raises(ValueError, match="has no metric"):
        plot_surface(surf, quantity="metric")
    one = loss_surface(obj, Directions(vectors=jax.tree.map(lambda a: a[:1], dirs.vectors),
                                       kind="custom"), grid=(np.linspace(-1, 1, 5),))
    assert plot_surface(one).get_ylabel() == "loss"
    path = interpolate(obj, obj.params, jax.tree.map(lambda a: -a, obj.params), num_points=5)
    assert "barrier" in " ".join(t.get_text() for t in plot_interpolation(path)
                                 .get_legend().get_texts())
    cks = [jax.tree.map(lambda a, s=s: a * (1 + s) + s ** 2, obj.params) for s in (0.3, 0.2, 0.0)]
    traj = trajectory_directions(cks)
    tsurf = loss_surface(obj.with_params(cks[-1]), traj, grid=(np.linspace(-1, 1, 3),) * 2)
    assert "% of variance" in plot_trajectory(tsurf, traj).get_xlabel()
    with pytest.raises(ValueError, match="not computed with these trajectory directions"):
        plot_trajectory(surf, traj)
    cmap = curvature_map(obj, dirs, grid=(np.array([0.0, 1.0]),) * 2, key=jax.random.key(0))
    assert plot_curvature_map(cmap).get_xlabel().startswith("direction 1")
    plt.close("all")
