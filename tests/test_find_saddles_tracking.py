"""Mode tracking in find_saddles (through an eigenvalue crossing) and polish's trust region
(Steihaug-Toint CG, forcing, Newton-MR fallback), against closed forms and dense float64
references."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hessian_tools as ht
from hessian_tools.analysis.polish import _steihaug_cg, find_saddles, polish
from hessian_tools.operators import from_dense
from hessian_tools.results.points import PolishResult
from conftest import spectrum_matrix

DUMMY = (jnp.zeros((1, 1)),)
Q, _ = np.linalg.qr(np.random.default_rng(3).normal(size=(5, 5)))


def _crossing(p, batch):
    """In y = Q p: 0.1 (y0^2 - 1)^2 + c(y0) y1^2 / 2 + stiff quadratics in y2..y4, with
    c(y0) = 1 - 0.95 exp(-((y0 - 0.75) / 0.15)^2). From the minimum y0 = 1 the lowest mode
    is y0 (curvature 0.8 against c(1) = 0.94), but on the way to the index-1 saddle at
    y = 0 (loss 0.1, curvature -0.4 along y0, c(0) ~ 1) the y1 curvature dips to 0.05 near
    y0 = 0.75 while the y0 curvature is still 0.275: the eigenvalues cross."""
    y = jnp.asarray(Q) @ p
    c = 1.0 - 0.95 * jnp.exp(-((y[0] - 0.75) / 0.15) ** 2)
    return (0.1 * (y[0] ** 2 - 1) ** 2 + 0.5 * c * y[1] ** 2
            + 0.5 * jnp.sum(jnp.array([2.0, 3.0, 4.0]) * y[2:] ** 2))


CROSSING = ht.Objective(_crossing, jnp.zeros(5), DUMMY)


def _crossing_starts():
    """Nudged minima with y1 = 0: the y0 and y1 modes do not mix (their eigenvalues cross,
    they do not avoid each other), so the mode to follow is unambiguous."""
    rng = np.random.default_rng(0)
    e0, nudge = np.eye(5)[0], np.array([1.0, 0, 1, 1, 1])
    return [jnp.asarray(Q.T @ (e0 + 0.02 * nudge * rng.normal(size=5))) for _ in range(3)]


def test_mode_tracking_follows_the_mode_through_an_eigenvalue_crossing():
    starts = _crossing_starts()
    tracked = find_saddles(CROSSING, starts, key=jax.random.key(0), target_index=1,
                           radius=0.1)
    assert len(tracked.reached) == 3 and tracked.options["track_modes"] == 4
    for p in tracked:
        np.testing.assert_allclose(Q @ np.asarray(p.params), 0.0, atol=1e-6)   # the saddle
        assert p.loss == pytest.approx(0.1, rel=1e-12)
        eig = np.linalg.eigvalsh(ht.dense_hessian(CROSSING.with_params(p.params)))
        np.testing.assert_allclose(eig[0], -0.4, rtol=1e-6)
        assert p.index == 1 and np.all(eig[1:] > 0.5)


def test_following_by_order_switches_modes_at_the_crossing():
    """The rule before mode tracking: the k lowest at every step; it climbs y1 at the
    crossing and ends back in the minimum."""
    search = find_saddles(CROSSING, _crossing_starts(), key=jax.random.key(0), target_index=1,
                          radius=0.1, track_modes=0)
    assert len(search.reached) == 0
    assert all(p.index == 0 for p in search)


# ---- polish: the trust-region step -----------------------------------------------------------

def test_steihaug_cg_solves_inside_and_follows_negative_curvature_to_the_boundary():
    A = spectrum_matrix([0.01, 0.1, 1.0, 3.0, 10.0], seed=1)
    g = jnp.asarray(np.random.default_rng(2).normal(size=5))
    apply = from_dense(jnp.asarray(A)).apply_unchecked
    exact = np.linalg.solve(A, -np.asarray(g))
    d, dhd, used = _steihaug_cg(apply, g, 10 * np.linalg.norm(exact), 1e-12, 50)
    np.testing.assert_allclose(np.asarray(d), exact, rtol=1e-8)              # interior: Newton
    assert dhd == pytest.approx(exact @ A @ exact, rel=1e-8) and used <= 50
    d, _, _ = _steihaug_cg(apply, g, 0.5, 1e-12, 50)
    assert np.linalg.norm(np.asarray(d)) == pytest.approx(0.5, rel=1e-12)    # boundary
    B = spectrum_matrix([-1.0, 0.5, 1.0, 2.0, 4.0], seed=1)
    apply = from_dense(jnp.asarray(B)).apply_unchecked
    d, dhd, _ = _steihaug_cg(apply, g, 2.0, 1e-12, 50)
    d = np.asarray(d)
    assert np.linalg.norm(d) == pytest.approx(2.0, rel=1e-12)
    assert dhd == pytest.approx(d @ B @ d, rel=1e-8)
    assert float(g @ d) + 0.5 * d @ B @ d < 0                                # a descent step


def _tiny_net():
    """A 4-3-3 tanh net, cross-entropy + 1e-3 ||w||^2 on 40 random points, after 300 Adam
    steps: the ill-conditioned, slightly indefinite end point of notebook 09 in small."""
    rng = np.random.default_rng(0)
    data = (jnp.asarray(rng.normal(size=(40, 4))), jnp.asarray(rng.integers(0, 3, size=40)))

    def loss(p, batch):
        x, y = batch
        logits = jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return ce + 1e-3 * (jnp.sum(p["w1"] ** 2) + jnp.sum(p["w2"] ** 2))

    k1, k2 = jax.random.split(jax.random.key(0))
    p = {"w1": jax.random.normal(k1, (4, 3)) / 2, "b1": jnp.zeros(3),
         "w2": jax.random.normal(k2, (3, 3)) / 2, "b2": jnp.zeros(3)}
    opt = optax.adam(1e-2)
    state = opt.init(p)

    @jax.jit
    def step(p, state):
        u, state = opt.update(jax.grad(loss)(p, data), state)
        return optax.apply_updates(p, u), state

    for _ in range(300):
        p, state = step(p, state)
    return ht.Objective(loss, p, data)


def test_trust_region_certifies_a_tanh_net_end_point_where_the_old_step_stalled():
    obj = _tiny_net()
    old = polish(obj, key=jax.random.key(0), max_steps=30, subproblem="lm-minres",
                 forcing="sqrt", fallback=None)
    new = polish(obj, key=jax.random.key(0), max_steps=30, fallback=None)
    assert old.status == "not converged" and old.grad_norm > 1e-4         # the old stall
    assert new.status == "critical" and new.certified_by == "trust-region"
    assert new.method == "trust-region" and new.newton_steps < 30
    assert np.all(np.diff(new.losses) < 0) and new.loss < old.loss
    H = np.asarray(ht.dense_hessian(obj.with_params(new.params)))
    eig = np.linalg.eigvalsh(H)
    assert eig[0] > -1e-9 * eig[-1]          # a minimum (b2's shift: an exact zero mode)
    assert new.verdict in ("minimum", "degenerate minimum")


def test_trust_region_falls_back_to_newton_mr_and_says_so():
    A = spectrum_matrix([0.05, 0.3, 1.0, 2.0, 7.0], seed=2)
    obj = ht.Objective(lambda p, b: 0.5 * p @ jnp.asarray(A) @ p - jnp.sum(p)
                       + 0.1 * jnp.sum(p ** 4), jnp.zeros(5), DUMMY)
    start = jnp.full(5, 3.0)
    res = polish(obj, start, key=jax.random.key(0), radius=1e-4, max_steps=12)
    assert res.method == "trust-region+newton-mr" and res.certified_by == "newton-mr"
    x = np.asarray(res.params)
    np.testing.assert_allclose(A @ x + 0.4 * x ** 3, 1.0, atol=1e-9)
    assert res.certified_minimum and res.losses[-1] == pytest.approx(res.loss, rel=1e-12)
    alone = polish(obj, start, key=jax.random.key(0), radius=1e-4, max_steps=12, fallback=None)
    assert alone.status == "not converged" and alone.certified_by == ""
    back = PolishResult.from_dict(res.to_dict())
    assert back.certified_by == "newton-mr" and back.method == res.method


def test_new_options_are_checked():
    key = jax.random.key(0)
    with pytest.raises(ValueError, match="track_modes=-1"):
        find_saddles(CROSSING, [jnp.ones(5)], key=key, target_index=1, track_modes=-1)
    with pytest.raises(ValueError, match="fallback='bfgs'"):
        polish(CROSSING, key=key, fallback="bfgs")
    with pytest.raises(ValueError, match="forcing='cubic'"):
        polish(CROSSING, key=key, forcing="cubic")
    with pytest.raises(ValueError, match="subproblem='dogleg'"):
        polish(CROSSING, key=key, subproblem="dogleg")


def _with_null_mode(p, batch):
    """In y = Q p: 0.1 (y0^2 - 1)^2 + stiff quadratics in y2..y4; the loss does not depend
    on y1 (an exact null mode, like a softmax's bias shift). Index-1 saddle at y0 = 0."""
    y = jnp.asarray(Q) @ p
    return 0.1 * (y[0] ** 2 - 1) ** 2 + 0.5 * jnp.sum(jnp.array([2.0, 3.0, 4.0]) * y[2:] ** 2)


def test_tracking_never_follows_a_null_mode():
    obj = ht.Objective(_with_null_mode, jnp.zeros(5), DUMMY)
    rng = np.random.default_rng(1)
    starts = [jnp.asarray(Q.T @ (np.eye(5)[0] + 0.02 * rng.normal(size=5))) for _ in range(2)]
    old = find_saddles(obj, starts[:1], key=jax.random.key(0), target_index=1, track_modes=0,
                       follow_steps=15, newton_steps=10)
    new = find_saddles(obj, starts, key=jax.random.key(0), target_index=1)
    assert len(old.reached) == 0                 # the null mode (eigenvalue 0) was "lowest"
    assert len(new.reached) == 2
    for p in new:
        assert abs((Q @ np.asarray(p.params))[0]) < 1e-6 and p.loss == pytest.approx(0.1)
