"""The tensor-parallel transformer-block example (docs/scale.md): on 8 host devices its
weights are split over the mesh axis, the eigenvectors come back split alike, and the top
eigenvalues equal one device's (a subprocess: the device count is fixed when JAX starts)."""

import os
import subprocess
import sys
import textwrap

import jax
import pytest

from flax import nnx

from hessian_tools.examples.transformer import Block, tensor_parallel_specs

SCRIPT = textwrap.dedent("""
    import jax
    jax.config.update("jax_enable_x64", True)
    import numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    import hessian_tools as ht
    from hessian_tools.examples import transformer
    assert len(jax.devices()) == 8, jax.devices()
    kw = dict(num_examples=32, dtype="float64")
    ref, obj = transformer.block_objective(**kw), transformer.sharded_block_objective(**kw)
    q = obj.params["attention"]["query"]["kernel"][...]
    assert q.sharding.spec == P(None, "model", None) and len(q.sharding.device_set) == 8
    assert q.addressable_shards[0].data.shape == (32, 1, 4)          # one head per device
    key = jax.random.key(2)
    want = ht.eigenvalues(ht.hessian(ref), k=3, key=key)
    got = ht.eigenvalues(ht.hessian(obj), k=3, key=key)
    np.testing.assert_allclose(got.values, want.values, rtol=1e-9)
    v = got.vectors["attention"]["query"]["kernel"][...]
    assert v.sharding.is_equivalent_to(NamedSharding(q.sharding.mesh, P(None, None, "model",
                                                                        None)), v.ndim)
    transformer.main(["--k", "2", "--dtype", "float64", "--num-examples", "32"])
""")


def test_tensor_parallel_specs_split_heads_and_hidden_units():
    from jax.sharding import PartitionSpec as P
    from hessian_tools import tree
    params = nnx.state(Block(rngs=nnx.Rngs(0)), nnx.Param)
    assert sum(a.size for a in jax.tree.leaves(params)) == 9418
    specs = tree.flat_paths(tensor_parallel_specs(params))
    assert specs["attention/key/kernel"] == P(None, "model", None)
    assert specs["attention/value/bias"] == P("model", None)
    assert specs["attention/out/kernel"] == P("model", None, None)
    assert specs["up/kernel"] == P(None, "model") and specs["up/bias"] == P("model")
    assert specs["down/kernel"] == P("model", None) and specs["down/bias"] == P()
    assert specs["embed/kernel"] == specs["head/kernel"] == specs["position"] == P()


@pytest.mark.slow
def test_tensor_parallel_block_on_eight_host_devices_matches_one_device():
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
           "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    diff = float(proc.stdout.split("largest relative difference:")[1].split()[0])
    assert diff < 1e-9, proc.stdout
