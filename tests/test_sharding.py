"""The scale path on one machine (subprocesses, since the device count is fixed when JAX
starts): 4 host devices with the data sharded across them; 8 host devices with the
parameters sharded over a 2x4 mesh (slow)."""

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import hessian_tools as ht
    from hessian_tools.examples.digits import digits_objective
    assert len(jax.devices()) == 4, jax.devices()
    obj = digits_objective("mlp-tiny", trained=False, dtype=jnp.float64, num_examples=400)
    mesh = Mesh(np.array(jax.devices()), ("data",))
    x, y = obj.data
    sharded = (jax.device_put(x, NamedSharding(mesh, P("data"))),
               jax.device_put(y, NamedSharding(mesh, P("data"))))
    par = ht.Objective(obj.loss, obj.params, sharded, predict=obj.predict,
                       output_loss=obj.output_loss)
    stack = jax.tree.leaves(par.groups.stacks[0])[0]
    assert len(stack.sharding.device_set) == 4, stack.sharding   # the data stays spread out
    v = ht.tree.normal_like(jax.random.key(0), obj.params)
    a = jax.flatten_util.ravel_pytree(ht.hessian(obj)(v))[0]
    b = jax.flatten_util.ravel_pytree(ht.hessian(par)(v))[0]
    np.testing.assert_allclose(b, a, atol=1e-12)
    e1 = ht.eigenvalues(ht.hessian(obj), k=3, key=jax.random.key(1))
    e2 = ht.eigenvalues(ht.hessian(par), k=3, key=jax.random.key(1))
    np.testing.assert_allclose(e2.values, e1.values, rtol=1e-9)
    try:                          # re-stacking on the host would silently drop the sharding
        ht.hessian(par, chunk_size=100)
        raise AssertionError("an explicit chunk_size on sharded data must raise")
    except ValueError as err:
        assert "lose its sharding" in str(err), err
    print("OK")
""")


def test_data_parallel_hvp_on_four_host_devices():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", "import jax.flatten_util\n" + SCRIPT],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")


PARAM_SCRIPT = textwrap.dedent("""
    import re
    import jax
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import hessian_tools as ht
    from hessian_tools.examples.digits import digits_objective
    from hessian_tools.linalg import _space
    assert len(jax.devices()) == 8, jax.devices()
    obj = digits_objective("mlp-tiny", trained=False, dtype=jnp.float64, num_examples=128)
    mesh = Mesh(np.array(jax.devices()).reshape(2, 4), ("a", "b"))

    def spec(a):                  # tensor-parallel: every kernel split over both mesh axes
        if a.ndim == 2:
            return P("a", "b") if a.shape[1] % 4 == 0 else P("b", "a")
        return P("b") if a.shape[0] % 4 == 0 else P()

    params = jax.tree.map(lambda a: jax.device_put(a, NamedSharding(mesh, spec(a))), obj.params)
    want = [NamedSharding(mesh, spec(a)) for a in jax.tree.leaves(obj.params)]
    op, ref = ht.hessian(obj.with_params(params)), ht.hessian(obj)
    assert op.placement is not None and ref.placement is None

    def same_layout(x, stacked):
        for a, s in zip(jax.tree.leaves(x), want):
            spec_ = P(None, *s.spec) if stacked else s.spec
            assert a.sharding.is_equivalent_to(NamedSharding(mesh, spec_), a.ndim), (
                a.shape, a.sharding, spec_)

    # the product keeps the parameters' sharding
    v = op.placement.put([np.ones(a.shape) for a in jax.tree.leaves(obj.params)])
    same_layout(v, False)
    same_layout(op(v), False)

    # solver buffers are created sharded; the compiled projection step gathers nothing
    space = _space.DeviceSpace(op.params_like)
    basis, locked = space.zeros(12), space.zeros(6)
    same_layout(basis, True)
    w = space.draw(np.random.default_rng(0))
    hlo = _space._project.lower(basis, locked, np.int32(3), w, 1.0,
                                pin=space.pin).compile().as_text()
    gathers = [line for line in hlo.splitlines() if re.search(r"all-gather(-start)?\\(", line)]
    assert not gathers, gathers[:3]
    basis, q, h, beta = space.project(basis, locked, 0, 0, w, 1.0)
    same_layout(basis, True)
    same_layout(q, False)

    # results equal the unsharded ones (eigenvectors come back sharded)
    e1 = ht.eigenvalues(ref, k=2, key=jax.random.key(1))
    e2 = ht.eigenvalues(op, k=2, key=jax.random.key(1))
    np.testing.assert_allclose(e2.values, e1.values, rtol=1e-10)
    np.testing.assert_allclose(e2.residuals, e1.residuals, atol=1e-9)
    same_layout(e2.vectors, True)
    p1 = ht.eigenvalues(ref, k=1, key=jax.random.key(4), method="power")
    p2 = ht.eigenvalues(op, k=1, key=jax.random.key(4), method="power")
    np.testing.assert_allclose(p2.values, p1.values, rtol=1e-8)
    d1 = ht.density(ref, key=jax.random.key(2), num_probes=3, num_steps=12)
    d2 = ht.density(op, key=jax.random.key(2), num_probes=3, num_steps=12)
    np.testing.assert_allclose(d2.nodes, d1.nodes, rtol=1e-9, atol=1e-12)
    for method in ("hutch++", "xtrace"):
        t1 = ht.trace(ref, method=method, key=jax.random.key(3), num_matvecs=12)
        t2 = ht.trace(op, method=method, key=jax.random.key(3), num_matvecs=12)
        np.testing.assert_allclose(t2.value, t1.value, rtol=1e-10)
    print("OK")
""")


@pytest.mark.slow
def test_parameter_sharded_solvers_on_a_2x4_mesh():
    """Parameters tensor-parallel over 8 host devices: products and solver buffers keep the
    parameters' shardings, the compiled projection step has no all-gather, and eigenvalues
    (Lanczos and power), the density and the traces equal the unsharded ones."""
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", PARAM_SCRIPT], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("OK")
