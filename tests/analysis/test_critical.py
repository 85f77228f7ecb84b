"""Critical points with known answers: verdicts, indices, flat directions, Newton-MR, CLI."""

import argparse
import itertools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessian_tools as ht
from hessian_tools.analysis import critical
from hessian_tools.linalg.minres import minres
from hessian_tools.cli.classify import add_parser as add_classify_parser
from conftest import spectrum_matrix

KEY = jax.random.key(0)
DUMMY = jnp.zeros((1, 1))
PATHS = [pytest.param(4000, id="dense"), pytest.param(0, id="lanczos")]


def _objective(f, x):
    """An objective of a plain function of the parameters (the batch is ignored)."""
    return ht.Objective(lambda p, batch: f(p), jax.tree.map(jnp.asarray, x), DUMMY)


def _poly_loss(params, batch):
    """``1/2 w^T A w + b^T w + sum_k q_k (u_k^T w)^4 + c_k (u_k^T w)^3``: one function for all
    the polynomial tests (the coefficients are data, so compiled code is shared)."""
    w = params["w"]
    a, b, u, q, c = (batch[name][0] for name in ("a", "b", "u", "q", "c"))
    proj = u.T @ w
    return 0.5 * w @ a @ w + b @ w + jnp.sum(q * proj ** 4) + jnp.sum(c * proj ** 3)


def _poly(a, *, b=None, u=None, quartic=None, cubic=None, at=None):
    """The polynomial objective at ``at`` (default 0); ``u`` defaults to the identity."""
    n = len(a)
    zeros = np.zeros(n)
    data = {"a": np.asarray(a, float), "b": zeros if b is None else np.asarray(b, float),
            "u": np.eye(n) if u is None else np.asarray(u, float),
            "q": zeros if quartic is None else np.asarray(quartic, float),
            "c": zeros if cubic is None else np.asarray(cubic, float)}
    point = {"w": jnp.asarray(zeros if at is None else np.asarray(at, float))}
    return ht.Objective(_poly_loss, point, {k: jnp.asarray(v)[None] for k, v in data.items()})


# ---- low-dimensional functions with known answers --------------------------------------------

FUNCTIONS = {
    # name: (objective arguments, verdict, index, num_flat)
    "x2-y2": (dict(a=np.diag([2.0, -2.0])), "saddle", 1, 0),
    "x2+3y2": (dict(a=np.diag([2.0, 6.0])), "minimum", 0, 0),
    "-x2-3y2": (dict(a=np.diag([-2.0, -6.0])), "maximum", 2, 0),
    "x2+y2+z4": (dict(a=np.diag([2.0, 2.0, 0.0]), quartic=[0, 0, 1.0]),
                 "degenerate minimum", 0, 1),
    "x2+y2+z3": (dict(a=np.diag([2.0, 2.0, 0.0]), cubic=[0, 0, 1.0]), "saddle", 0, 1),
    "x2+2y2-z4": (dict(a=np.diag([2.0, 4.0, 0.0]), quartic=[0, 0, -1.0]), "saddle", 0, 1),
    "-x2-2y2-z4": (dict(a=np.diag([-2.0, -4.0, 0.0]), quartic=[0, 0, -1.0]), "maximum", 2, 1),
    "-x2-2y2+z4": (dict(a=np.diag([-2.0, -4.0, 0.0]), quartic=[0, 0, 1.0]), "saddle", 2, 1),
    "x2-y2 off": (dict(a=np.diag([2.0, -2.0]), at=[0.5, 0.0]), "not critical", 1, 0),
}


@pytest.mark.parametrize("dense_max_params", PATHS)
@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_small_functions_verdict_index_and_flat_count(name, dense_max_params):
    spec, verdict, index, num_flat = FUNCTIONS[name]
    rep = ht.classify(_poly(**spec), key=KEY, dense_max_params=dense_max_params)
    assert (rep.verdict, rep.index, rep.num_flat) == (verdict, index, num_flat), rep
    assert rep.index_interval == (index, index)


def test_higher_order_saddle_and_degenerate_minimum_say_why():
    quartic = ht.classify(_poly(**FUNCTIONS["x2+y2+z4"][0]), key=KEY)
    assert quartic.detail.startswith("degenerate minimum: no descent found along the")
    assert quartic.flat_probe["found"] is False and quartic.flat_probe["num_directions"] >= 1
    cubic = ht.classify(_poly(**FUNCTIONS["x2+y2+z3"][0]), key=KEY)
    assert cubic.detail.startswith("saddle (higher order)")
    assert cubic.flat_probe["found"] and cubic.flat_probe["best_change"] < 0


def test_deep_linear_chain_at_the_origin():
    """Depth 2: a strict saddle (H = [[0,-1],[-1,0]]). Depth 3: H = 0 at the origin, a
    higher-order saddle with no negative eigenvalue (Kawaguchi 2016)."""
    two = ht.classify(_objective(lambda w: 0.5 * (w[1] * w[0] - 1.0) ** 2, np.zeros(2)), key=KEY)
    assert (two.verdict, two.index, two.num_flat) == ("saddle", 1, 0)
    three = ht.classify(_objective(lambda w: 0.5 * (w[2] * w[1] * w[0] - 1.0) ** 2, np.zeros(3)),
                        key=KEY)
    assert (three.verdict, three.index, three.num_flat) == ("saddle", 0, 3)
    assert "higher order" in three.detail


# ---- quadratic forms with a prescribed index (all of dimension N: compiled code is shared) ---

N = 24


@pytest.mark.parametrize("dense_max_params", PATHS)
@pytest.mark.parametrize("negatives", [0, 1, 3, 6])
def test_quadratic_with_prescribed_index(negatives, dense_max_params):
    eigs = np.r_[-np.linspace(0.5, 3.0, negatives), np.linspace(0.3, 5.0, N - negatives)]
    rep = ht.classify(_poly(spectrum_matrix(eigs, seed=negatives)), key=KEY,
                      dense_max_params=dense_max_params)
    assert rep.index == negatives
    assert rep.verdict == ("minimum" if negatives == 0 else "saddle")
    assert rep.num_flat == 0
    np.testing.assert_allclose([rep.lambda_min, rep.lambda_max], [eigs.min(), eigs.max()],
                               rtol=1e-6)
    assert rep.index_fraction == pytest.approx(negatives / N)


def test_negative_definite_quadratic_is_a_maximum():
    rep = ht.classify(_poly(spectrum_matrix(-np.linspace(1.0, 2.0, N))), key=KEY)
    assert (rep.verdict, rep.index) == ("maximum", N)


def test_flat_directions_of_a_quadratic_are_probed_at_higher_order():
    a = spectrum_matrix(np.r_[0.0, 0.0, np.linspace(1.0, 3.0, N - 2)], seed=4)
    u = np.linalg.eigh(a)[1]                                # columns 0, 1: the null space
    quartic = ht.classify(_poly(a, u=u, quartic=np.r_[1.0, 1.0, np.zeros(N - 2)]), key=KEY)
    assert (quartic.verdict, quartic.num_flat, quartic.index) == ("degenerate minimum", 2, 0)
    cubic = ht.classify(_poly(a, u=u, cubic=np.r_[0.0, 1.0, np.zeros(N - 2)]), key=KEY)
    assert (cubic.verdict, cubic.num_flat, cubic.index) == ("saddle", 2, 0)
    assert "higher order" in cubic.detail


# ---- honesty and thresholds -------------------------------------------------------------------

def test_tiny_negative_eigenvalue_is_flat_unless_the_threshold_is_lowered():
    eigs = np.r_[-1e-9, np.linspace(1.0, 4.0, N - 1)]       # -1e-9 << tau = 1% of 4
    obj = _poly(spectrum_matrix(eigs, seed=2))
    default = ht.classify(obj, key=KEY)
    assert (default.verdict, default.index, default.num_flat) == ("degenerate minimum", 0, 1)
    strict = ht.classify(obj, key=KEY, tau=4e-12)
    assert (strict.verdict, strict.index, strict.num_flat) == ("saddle", 1, 0)
    assert strict.thresholds["tau"] == 4e-12 and strict.thresholds["tau_rule"] == "given"


def test_negative_only_within_its_error_bar_is_not_counted():
    values = np.array([-1e-3, -1e-2, 0.5, 2.0])
    errors = np.array([2e-3, 1e-4, 1e-4, 1e-4])              # the first: sign undetermined
    neg, flat, pos = critical._count(values, errors, 1e-6)
    assert neg.tolist() == [False, True, False, False]
    assert flat.tolist() == [True, False, False, False]
    assert pos.tolist() == [False, False, True, True]


def test_large_gradient_is_not_critical_and_grad_tol_is_settable():
    a = spectrum_matrix(np.r_[-1.0, np.linspace(1.0, 3.0, N - 1)], seed=1)
    big = ht.classify(_poly(a, b=np.ones(N)), key=KEY)
    assert big.verdict == "not critical" and big.index == 1 and not big.is_critical
    assert big.grad_norm == pytest.approx(np.sqrt(N))
    assert big.flat_probe == {}
    small = _poly(a, b=1e-10 * np.ones(N))
    assert ht.classify(small, key=KEY).verdict == "saddle"
    assert ht.classify(small, key=KEY, grad_tol=1e-12).verdict == "not critical"


def test_every_threshold_is_in_the_report_and_explained():
    rep = ht.classify(_poly(**FUNCTIONS["x2+y2+z4"][0]), key=KEY)
    for name in ("grad_tol", "tau", "eig_tol", "decrease_tol",
                 "probe_radii", "dense_max_params", "max_lanczos_index"):
        assert name in rep.thresholds and name in rep.explain()
    text = str(rep)
    assert "DEGENERATE MINIMUM" in text and "grad_tol" in text and "lambda_min" in text
    assert rep.thresholds["tau"] == pytest.approx(ht.default_threshold(2.0, jnp.float64))
    assert rep.thresholds["tau"] == pytest.approx(1e-2 * 2.0)    # 1% of max|lambda| = 2


# ---- the linear autoencoder (Baldi & Hornik 1989) ---------------------------------------------

def _linear_autoencoder(d=5, p=2, n=40, seed=0):
    """Data with covariance U diag(d, ..., 1) U^T exactly; loss 1/2 mean ||x - B A x||^2."""
    rng = np.random.default_rng(seed)
    lams = np.arange(d, 0, -1.0)
    u, _ = np.linalg.qr(rng.normal(size=(d, d)))
    z, _ = np.linalg.qr(rng.normal(size=(n, d)))
    x = ((u * np.sqrt(lams)) @ z.T * np.sqrt(n)).T

    def loss(prm, batch):
        return 0.5 * jnp.mean(jnp.sum((batch - batch @ prm["A"].T @ prm["B"].T) ** 2, axis=1))

    def point(subset, c):
        return {"A": jnp.asarray(np.linalg.inv(c) @ u[:, subset].T),
                "B": jnp.asarray(u[:, subset] @ c)}
    return loss, jnp.asarray(x), lams, point


def _ae_answer(subset, lams):
    """Index: pairs (m in I, j not in I) with lambda_j > lambda_m; loss: 1/2 sum_{j not in I}."""
    rest = [j for j in range(len(lams)) if j not in subset]
    index = sum(lams[j] > lams[m] for m in subset for j in rest)
    return index, 0.5 * sum(lams[j] for j in rest)


def test_linear_autoencoder_critical_points_have_the_closed_form_index():
    loss, x, lams, point = _linear_autoencoder()
    rng = np.random.default_rng(1)
    for subset in itertools.combinations(range(5), 2):
        c = rng.normal(size=(2, 2)) + 2 * np.eye(2)            # any invertible C: same point class
        # the closed form counts every negative eigenvalue, some at 0.2% of max|lambda|:
        # below the default tau (1%), so the exact count needs a tau near rounding
        rep = ht.classify(ht.Objective(loss, point(subset, c), x), key=KEY, tau=1e-5)
        index, value = _ae_answer(subset, lams)
        assert rep.index == index and rep.num_flat == 4, (subset, rep)   # GL(2): 4 flat
        assert rep.loss == pytest.approx(value)
        if subset == (0, 1):
            assert rep.verdict == "degenerate minimum"
            assert "no descent found along the" in rep.detail
        else:
            assert rep.verdict == "saddle"


@pytest.mark.slow
@pytest.mark.parametrize("subset", [(0, 1), (3, 4)])
def test_linear_autoencoder_by_lanczos(subset):
    loss, x, lams, point = _linear_autoencoder()
    rep = ht.classify(ht.Objective(loss, point(subset, np.eye(2) + 0.3), x), key=KEY,
                      dense_max_params=0, tau=1e-5)
    assert rep.index == _ae_answer(subset, lams)[0]
    assert rep.verdict == ("degenerate minimum" if subset == (0, 1) else "saddle")
    assert rep.index_method == "lanczos"


# ---- large index: the SLQ / negative_count path ----------------------------------------------

def test_large_index_uses_negative_count():
    eigs = np.r_[-np.linspace(0.5, 2.0, 14), np.linspace(0.5, 4.0, N - 14)]
    rep = ht.classify(_poly(spectrum_matrix(eigs, seed=5)), key=KEY, dense_max_params=0,
                      max_lanczos_index=30)
    assert rep.verdict == "saddle" and rep.index == 14
    assert rep.index_interval == (14, 14)


@pytest.mark.slow
def test_large_index_slq_interval_covers_the_truth():
    eigs = np.r_[-np.linspace(0.5, 2.0, 300), np.linspace(0.5, 4.0, 700)]
    rep = ht.classify(_poly(spectrum_matrix(eigs, seed=6)), key=KEY, dense_max_params=0,
                      max_lanczos_index=16)
    assert rep.index_method == "slq"
    low, high = rep.index_interval
    assert low <= 300 <= high and high - low < 400


# ---- results: JSON and text -------------------------------------------------------------------

def test_report_round_trips_through_json():
    rep = ht.classify(_poly(**FUNCTIONS["x2+y2+z4"][0]), key=KEY)
    back = ht.CriticalPointReport.from_json(rep.to_json())
    assert back == rep
    assert json.loads(rep.to_json())["type"] == "CriticalPointReport"


# ---- errors ------------------------------------------------------------------------------------

def test_classify_errors():
    obj = _poly(**FUNCTIONS["x2-y2"][0])
    with pytest.raises(ValueError, match="explicit PRNG key"):
        ht.classify(obj, key=None)
    with pytest.raises(ValueError, match="tau=-1"):
        ht.classify(obj, key=KEY, tau=-1)
    with pytest.raises(ValueError, match="probe_scales"):
        ht.classify(obj, key=KEY, probe_scales=())
    with pytest.raises(ValueError, match="max_lanczos_index=0"):
        ht.classify(obj, key=KEY, max_lanczos_index=0)


def test_find_critical_points_errors():
    obj = _objective(lambda p: jnp.sum(p["w"] ** 2), {"w": np.ones(3)})
    with pytest.raises(ValueError, match="empty"):
        ht.find_critical_points(obj, [], key=KEY)
    with pytest.raises(ValueError, match=r"starts\[1\].*'w'.*\(4,\)"):
        ht.find_critical_points(obj, [{"w": jnp.ones(3)}, {"w": jnp.ones(4)}], key=KEY)
    with pytest.raises(TypeError, match="list of parameter pytrees"):
        ht.find_critical_points(obj, {"w": jnp.ones(3)}, key=KEY)
    with pytest.raises(ValueError, match="explicit PRNG key"):
        ht.find_critical_points(obj, [obj.params], key=None)


# ---- MINRES --------------------------------------------------------------------------------------

def test_minres_solves_indefinite_systems_on_pytrees():
    a = spectrum_matrix(np.r_[-np.linspace(1, 3, 6), np.linspace(0.5, 5, 14)], seed=3)
    b = np.random.default_rng(0).normal(size=20)
    split = lambda v: {"u": v[:7], "v": v[7:].reshape(13, 1)}
    matvec = lambda t: split(jnp.asarray(a) @ jnp.concatenate([t["u"], t["v"].ravel()]))
    res = minres(matvec, split(jnp.asarray(b)), num_matvecs=60, rtol=1e-12)
    x = np.concatenate([res.x["u"], np.ravel(res.x["v"])])
    np.testing.assert_allclose(x, np.linalg.solve(a, b), rtol=1e-8, atol=1e-10)
    assert res.converged and res.num_matvecs <= 21


def test_minres_least_squares_on_a_singular_inconsistent_system():
    a = spectrum_matrix(np.r_[0.0, 0.0, np.linspace(-2, 3, 8)], seed=7)
    b = np.random.default_rng(1).normal(size=10)
    res = minres(lambda v: jnp.asarray(a) @ v, jnp.asarray(b), num_matvecs=50, rtol=1e-10)
    x_ls = np.linalg.lstsq(a, b, rcond=None)[0]
    np.testing.assert_allclose(a @ np.asarray(res.x), a @ x_ls, atol=1e-8)
    assert res.residual_norm == pytest.approx(np.linalg.norm(a @ x_ls - b), rel=1e-6)


# ---- find_critical_points ------------------------------------------------------------------------

def test_newton_mr_finds_autoencoder_saddles_and_the_minimum():
    loss, x, lams, point = _linear_autoencoder()
    rng = np.random.default_rng(3)
    subsets = [(0, 1), (0, 2), (3, 4)]
    starts = [jax.tree.map(lambda a: a + 0.03 * rng.normal(size=a.shape),
                           point(s, rng.normal(size=(2, 2)) + 2 * np.eye(2))) for s in subsets]
    obj = ht.Objective(loss, starts[0], x)
    found = ht.find_critical_points(obj, starts, key=KEY, classify_options={"tau": 1e-5})
    assert len(found) == 3 and len(found.critical) == 3
    for p, subset in zip(found, subsets):
        index, value = _ae_answer(subset, lams)
        assert p.status == "critical" and p.grad_norm <= p.report.thresholds["grad_tol"]
        assert p.index == index and p.loss == pytest.approx(value, rel=1e-9)
        assert p.grad_norms[0] > 1e-2 > 1e3 * p.grad_norms[-1]
    assert [p.verdict for p in found] == ["degenerate minimum", "saddle", "saddle"]
    np.testing.assert_array_equal(found.indices, [0, 1, 6])
    back = ht.CriticalPointSearch.from_json(found.to_json())
    assert [p.index for p in back] == [0, 1, 6] and back[0].params is None


def test_gradient_flat_region_is_not_reported_as_critical():
    """L = 1/2 w^T A w + c^T w with A singular and c not in range(A): ||grad L|| >= ||P c||
    > 0 everywhere, and the minimum of ||grad L|| is a gradient-flat point (H g = 0)."""
    a = spectrum_matrix(np.r_[0.0, np.linspace(1.0, 3.0, N - 1)], seed=8)
    null = np.linalg.eigh(a)[1][:, 0]
    r = np.random.default_rng(2).normal(size=N)
    obj = _poly(a, b=1e-3 * null + r - (r @ null) * null)
    found = ht.find_critical_points(obj, [obj.params], key=KEY)
    p = found[0]
    assert p.status == "gradient-flat" and p.verdict == "not critical"
    assert p.grad_norm == pytest.approx(1e-3, rel=1e-6)
    assert p.flatness <= found.options["gradient_flat_tol"]
    assert found.critical == ()


def test_unconverged_search_is_labelled():
    obj = _objective(lambda p: jnp.sum(jnp.cos(3 * p["w"])) + 0.1 * jnp.sum(p["w"] ** 4),
                     {"w": np.full(4, 0.2)})
    p = ht.find_critical_points(obj, [obj.params], key=KEY, newton_steps=1)[0]
    assert p.status == "not converged" and p.newton_steps == 1


def test_plot_index_vs_loss_returns_the_axes():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    a = spectrum_matrix(np.r_[-1.0, np.linspace(2.0, 3.0, N - 1)], seed=0)
    obj = _poly(a, b=np.ones(N))
    found = ht.find_critical_points(obj, [obj.params], key=KEY)
    assert found[0].status == "critical" and found[0].index == 1
    ax = ht.plot_index_vs_loss(found)
    assert ax.get_xlabel().startswith("index")
    plt.close(ax.figure)


# ---- the CLI subcommand -----------------------------------------------------------------------

MODEL_FILE = """
import jax.numpy as jnp
import hessian_tools as ht

def make():
    return ht.Objective(lambda p, b: p["x"] ** 2 - p["y"] ** 2 + p["y"] ** 4,
                        {"x": jnp.zeros(()), "y": jnp.zeros(())}, jnp.zeros((1, 1)))

def not_an_objective():
    return 3
"""


def _cli(argv):
    parser = argparse.ArgumentParser(prog="hessian-tools")
    add_classify_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_classify_user_model(tmp_path, capsys):
    model = tmp_path / "my_model.py"
    model.write_text(MODEL_FILE)
    out = tmp_path / "out"
    assert _cli(["classify", "--model", f"{model}:make", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "SADDLE" in text and "wrote" in text
    saved = json.loads((out / "classify.json").read_text())
    assert saved["report"]["verdict"] == "saddle" and saved["report"]["index"] == 1


def test_cli_classify_bad_model(tmp_path):
    from hessian_tools.cli import UserError
    model = tmp_path / "my_model.py"
    model.write_text(MODEL_FILE)
    with pytest.raises(UserError, match="must return a hessian_tools.Objective"):
        _cli(["classify", "--model", f"{model}:not_an_objective", "--out", str(tmp_path)])
    with pytest.raises(UserError, match="module:function"):
        _cli(["classify", "--model", "no_colon", "--out", str(tmp_path)])
    with pytest.raises(UserError, match="has no callable .nope."):
        _cli(["classify", "--model", f"{model}:nope", "--out", str(tmp_path)])


@pytest.mark.slow
def test_cli_classify_builtin_example(tmp_path, capsys):
    assert _cli(["classify", "--example", "mlp-tiny", "--num-examples", "200", "--json",
                 "--out", str(tmp_path)]) == 0
    saved = json.loads(capsys.readouterr().out)
    assert saved["report"]["verdict"] in ht.VERDICTS
    assert saved["analysed"]["num_params"] == 1210
