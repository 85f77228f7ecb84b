"""The scale path on one machine: 4 host devices, data sharded across them (a subprocess,
since the device count is fixed when JAX starts)."""

import os
import subprocess
import sys
import textwrap

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
