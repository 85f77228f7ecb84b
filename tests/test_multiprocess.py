"""Two processes under ``jax.distributed`` on loopback (gloo), 2 CPU devices each, with the
parameters sharded across the processes: both get the single-process answer."""

import os
import socket
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hessian_tools as ht
from hessian_tools.examples.digits import digits_objective

WORKER = textwrap.dedent("""
    import sys
    import jax
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address="127.0.0.1:" + sys.argv[2],
                               num_processes=2, process_id=int(sys.argv[1]))
    import jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    import hessian_tools as ht
    from hessian_tools.examples.digits import digits_objective
    assert len(jax.devices()) == 4 and len(jax.local_devices()) == 2
    obj = digits_objective("mlp-tiny", trained=False, dtype=jnp.float64, num_examples=128)
    mesh = Mesh(np.array(jax.devices()).reshape(2, 2), ("a", "b"))   # rows: the processes
    put = lambda a, s: jax.device_put(np.asarray(a), NamedSharding(mesh, s))
    params = jax.tree.map(lambda a: put(a, P("a", "b") if a.ndim == 2 else P("a")),
                          obj.params)
    assert not params["layers"][0]["kernel"].value.is_fully_addressable
    x, y = obj.data
    par = ht.Objective(obj.loss, params, (put(x, P()), put(y, P())), predict=obj.predict,
                       output_loss=obj.output_loss)
    op = ht.hessian(par)
    e = ht.eigenvalues(op, k=2, key=jax.random.key(1))
    t = ht.trace(op, method="hutch++", key=jax.random.key(3), num_matvecs=12)
    print("RESULT", *map(repr, [*map(float, e.values), float(t.value)]), flush=True)
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_with_parameters_sharded_across_them():
    obj = digits_objective("mlp-tiny", trained=False, dtype=jnp.float64, num_examples=128)
    op = ht.hessian(obj)
    want = [*ht.eigenvalues(op, k=2, key=jax.random.key(1)).values,
            ht.trace(op, method="hutch++", key=jax.random.key(3), num_matvecs=12).value]
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(i), port], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    try:
        outs = [p.communicate(timeout=400) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err[-3000:]
        got = [float(v) for v in out.split("RESULT", 1)[1].split()]
        np.testing.assert_allclose(got, want, rtol=1e-10)
