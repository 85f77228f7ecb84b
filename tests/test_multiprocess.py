"""Two processes under ``jax.distributed`` on loopback (gloo), 2 CPU devices each, with the
parameters sharded across the processes: both get the single-process answer, through the
library and through ``hessian-tools spectrum``."""

import json
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
from hessian_tools.cli import main
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


def launch(argv, env: dict, num: int = 2, timeout: float = 400) -> list:
    """Start ``num`` processes on loopback, each running ``argv(i, port)`` (a command) with
    ``env(i, port)`` added to the environment, 2 CPU devices each; ``[(returncode, stdout,
    stderr)]`` in process order."""
    port = str(_free_port())
    base = {**os.environ, "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    procs = [subprocess.Popen(argv(i, port), env={**base, **env(i, port)},
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(num)]
    try:
        outs = [p.communicate(timeout=timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return [(p.returncode, out, err) for p, (out, err) in zip(procs, outs)]


@pytest.mark.slow
def test_two_processes_with_parameters_sharded_across_them():
    obj = digits_objective("mlp-tiny", trained=False, dtype=jnp.float64, num_examples=128)
    op = ht.hessian(obj)
    want = [*ht.eigenvalues(op, k=2, key=jax.random.key(1)).values,
            ht.trace(op, method="hutch++", key=jax.random.key(3), num_matvecs=12).value]
    runs = launch(lambda i, port: [sys.executable, "-c", WORKER, str(i), port],
                  lambda i, port: {})
    for code, out, err in runs:
        assert code == 0, err[-3000:]
        got = [float(v) for v in out.split("RESULT", 1)[1].split()]
        np.testing.assert_allclose(got, want, rtol=1e-10)


CLI = ["spectrum", "--model", "hessian_tools.examples.transformer:sharded_block_objective",
       "--model-kwargs", '{"num_examples": 32, "dtype": "float64"}', "--dtype", "float64",
       "--top", "2", "--bottom", "0", "--no-compile-cache"]


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


@pytest.mark.slow
def test_cli_spectrum_on_two_processes_writes_once_and_matches_one_process(tmp_path):
    """``hessian-tools spectrum`` under jax.distributed (the environment variables of
    docs/scale.md), a transformer block's weights tensor-parallel across both processes:
    process 0 writes the one set of results and prints, process 1 writes and prints
    nothing, and the results equal one process's."""
    single, multi = tmp_path / "single", tmp_path / "multi"
    assert main(CLI + ["--out", str(single), "--quiet"]) == 0
    runs = launch(lambda i, port: [sys.executable, "-m", "hessian_tools", *CLI,
                                   "--out", str(multi)],
                  lambda i, port: {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                                   "HESSIAN_TOOLS_NUM_PROCESSES": "2",
                                   "HESSIAN_TOOLS_PROCESS_ID": str(i)})
    for code, out, err in runs:
        assert code == 0, err[-3000:]
    assert "λ_max" in runs[0][1] and "wrote" in runs[0][1], runs[0][1]   # process 0 prints
    gloo = lambda out: [line for line in out.splitlines() if not line.startswith("[Gloo]")]
    assert gloo(runs[1][1]) == []                    # process 1 prints nothing (gloo does)
    assert _files(multi) == _files(single)           # one set, nothing else
    got, want = (json.loads((d / "checkpoints" / "model.json").read_text())["result"]
                 for d in (multi, single))
    assert got["analysed"]["num_params"] == want["analysed"]["num_params"] == 9418
    for a, b in zip(got["eigenvalues"], want["eigenvalues"]):
        np.testing.assert_allclose(a["values"], b["values"], rtol=1e-9)
    np.testing.assert_allclose([got["loss"], got["grad_norm"]],
                               [want["loss"], want["grad_norm"]], rtol=1e-9)


def test_distributed_environment_is_read_and_checked():
    from hessian_tools.cli._common import UserError, start_distributed
    assert start_distributed("spectrum", environ={}) is False       # one process: nothing
    with pytest.raises(UserError, match="HESSIAN_TOOLS_PROCESS_ID='one' is not an integer"):
        start_distributed("spectrum", environ={"HESSIAN_TOOLS_PROCESS_ID": "one"})
    with pytest.raises(UserError, match="hessian-tools landscape runs in one process"):
        start_distributed("landscape", environ={"HESSIAN_TOOLS_NUM_PROCESSES": "2"})


def test_a_process_after_the_first_writes_and_prints_nothing(tmp_path, monkeypatch, capsys):
    """What process 1 does under jax.distributed, in one process: computes, exit code as
    process 0's, no folder, no lock, no file, nothing on stdout."""
    from hessian_tools.cli import spectrum
    monkeypatch.setattr(spectrum, "writes_files", lambda: False)
    out = tmp_path / "out"
    assert main(["spectrum", "--model", "hessian_tools.examples.digits:digits_objective",
                 "--model-kwargs", '{"name": "mlp-tiny", "trained": false, "num_examples": 64}',
                 "--top", "1", "--bottom", "0", "--no-compile-cache", "--out", str(out)]) == 0
    assert not out.exists() and capsys.readouterr().out == ""
