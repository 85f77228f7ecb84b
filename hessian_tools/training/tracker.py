"""The sharpness tracker: measures curvature every few steps of a training loop, warm
started, into a crash-safe JSON-lines log.
"""

from __future__ import annotations

import functools
import hashlib
import time
import warnings
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hessian_tools import tree
from hessian_tools.algebra import inverse_sqrt
from hessian_tools.objective import Objective
from hessian_tools.operators import CurvatureOperator, hessian, value_and_grad
from hessian_tools.analysis.traces import trace
from hessian_tools.results import SharpnessLog, jsonable
from hessian_tools.training.log import _append_line, _drop_partial_line, read_sharpness_log
from hessian_tools.training.optimizers import (_ADAM_STATES, _RMS_STATES, _RSS_STATES,
                                              _STDDEV_STATES, OptimizerInfo, _align_to_params,
                                              _find_states, _injected_hyperparams,
                                              adaptive_preconditioner, optimizer_info)
from hessian_tools.training.measure import _top, _validate_solver_options

__all__ = ['QUANTITIES', 'SharpnessTracker']


QUANTITIES = ("lambda_max", "top_k", "lambda_min", "trace", "grad_overlap", "loss",
              "precond_lambda_max")


_LOG_VERSION = 1


class SharpnessTracker:
    """Measures curvature every ``every`` steps of a training loop, warm started.

    ``update(step, params, opt_state)`` measures when ``step % every == 0`` and returns the
    record (else ``None``). ``params`` is a pytree like the objective's parameters, or a
    flax NNX model (its parameters *and* its state, BatchNorm statistics included, are read
    from it), and ``opt_state`` an optax state or an ``nnx.Optimizer``::

        tracker = ht.SharpnessTracker(ht.Objective.from_nnx(model, output_loss, measure),
                                      every=10, key=key)
        for step in range(steps):
            tracker.update(step, model, optimizer)     # NNX
            ...

    Every measurement computes ``lambda_max`` of the Hessian of the objective's loss on its
    fixed data (its top-k Ritz pairs, converged to ``tol``), and optionally:

    * ``"top_k"``: the ``k`` largest eigenvalues (``k`` Ritz pairs converged);
    * ``"lambda_min"``: the smallest eigenvalue (in the same Lanczos run; slower to
      converge, since the bottom of a Hessian spectrum is a dense bulk);
    * ``"trace"``: a stochastic estimate with ``trace_num_matvecs`` products and its standard
      error (Hutch++ via :func:`hessian_tools.trace`; Hutchinson if that is unavailable);
    * ``"grad_overlap"``: ``||P_k g||^2 / ||g||^2``, the fraction of the gradient in the
      top-k eigenspace (Gur-Ari et al. 2018), and ``"loss"`` on the measurement set;
    * ``"precond_lambda_max"``: ``lambda_max(P^{-1/2} H P^{-1/2})``, measured automatically
      whenever ``preconditioner`` resolves to a ``P`` (by default: read from an adaptive
      optimizer's ``opt_state``).

    Records go to ``tracker.log`` (a :class:`SharpnessLog`) and, with ``log_path``, to an
    append-only JSON-lines file, one line per measurement, flushed (and fsynced) when
    written. A tracker opened on an existing log resumes it: old records are loaded, steps
    already logged are not measured again, and new records are appended.

    Cost per measurement: with a warm start typically 3-10 HVPs for ``lambda_max`` (reported
    per record as ``num_matvecs``), the same again for the preconditioned value,
    ``trace_num_matvecs`` for the trace, one gradient for ``grad_overlap``/``loss``, and one
    linearisation of the gradient (about one gradient pass) when the operator is
    linearised. Memory: the Lanczos basis ``(krylov_dim + 1) x P`` during a measurement,
    ``(k + 2) x P`` warm-start vectors between measurements (top ``k``, one guard, and the
    bottom vector with ``"lambda_min"``) per operator. Compiled functions take the
    parameters as arguments: compiled at the first measurement, never re-traced.

    Cost in minibatch training: the overhead (extra time / training time) is about ``t_meas /
    (every x t_step)``, with ``t_meas`` a measurement's seconds (``log["wall_time"]``) and
    ``t_step`` a training step's. On a 2-core CPU ``t_meas`` is about 60 ms of fixed host work
    plus 5-9 HVPs on the measurement set (twice that with Adam, whose preconditioned value is
    measured too). ``(measure / batch) x HVPs / every`` is an upper bound, tight only when
    training is compute-bound. Measured with batch 32 on digits, a CNN run takes 2.8x as long
    as without tracking when measuring every 10 steps on 128 examples, 6.6x on 512 and 18x on
    all 1797; every 50 on 512, 2.6x; every 200, 1.6x (the small MLP: 1.4-1.6x every 10, 1.1x
    every 50, whatever the set size). Three knobs bound it: a larger ``every`` (the overhead
    scales as ``1/every``), a smaller measurement set (:func:`measurement_subset`; 512 examples
    were within 3% of the full-data ``lambda_max``, 128 up to 18% off), and a small
    ``num_matvecs`` (5: 25-45% cheaper, records then say ``converged: false``). See
    ``benchmarks/RESULTS_sharpness.md``.

    Args:
      objective: what is measured: the loss, a template of the parameters (structure and
        shapes), and the fixed measurement set as its data (one batch, a list of batches, or
        a stream; a subset of the training data keeps measurements cheap). Build it with
        ``Objective(loss, params, data)`` or ``Objective.from_nnx(model, output_loss, data,
        bn_mode=...)``: its ``bn_mode`` and dtype are those of every measurement.
      every: measurement period in steps.
      log_path: optional ``.jsonl`` path (parent folders are created).
      quantities: names from :data:`QUANTITIES`.
      key: a ``jax.random`` key (start vectors and trace probes).
      k: eigenvalues for ``"top_k"`` and ``"grad_overlap"`` (default 10, one per class for
        a 10-class problem).
      tol: relative residual tolerance of each eigenvalue (see :func:`sharpness`).
      preconditioner: ``"auto"`` (from ``opt_state``), ``None`` (never), or a callable
        ``preconditioner(params, opt_state) -> P`` (a pytree like params, positive).
      optimizer: optional optax optimizer, probed once (:func:`optimizer_info`) for the
        learning rate, momentum and ``b2``/``eps`` used for thresholds and ``P`` (or an
        :class:`OptimizerInfo`). Without it the threshold is ``2/eta`` for a plain state,
        read from ``optax.inject_hyperparams`` values, or Adam's for an Adam state.
      trace_num_matvecs: operator products per trace estimate (at least 2; 4 or more for
        Hutch++).
      warm_start: start each measurement from the previous one (``False``: random start,
        for comparison).
      krylov_dim: solver options (see :func:`sharpness`).
      num_matvecs: see ``krylov_dim``.
      min_steps: see ``krylov_dim``.
      resume: append to an existing log (``False`` with an existing file raises unless
        ``overwrite``).
      overwrite: replace an existing log.
      fsync: ``os.fsync`` after every record (crash-safe on power loss, ~ms per record).

    Raises:
      ValueError: unknown quantities, bad options, an existing log with ``resume=False``.
    """

    def __init__(self, objective: Objective, *, every: int = 10,
                 log_path=None, quantities=("lambda_max",), key=None, k: int = 10,
                 tol: float = 1e-3, preconditioner="auto", optimizer=None,
                 trace_num_matvecs: int = 10, warm_start: bool = True, krylov_dim: int = 40,
                 num_matvecs: int = 300, min_steps: int = 3, linearize="auto",
                 resume: bool = True, overwrite: bool = False, fsync: bool = True):
        self._validate(objective, every, quantities, key, k, preconditioner, trace_num_matvecs)
        self.objective, self.every = objective, every
        self.quantities = tuple(dict.fromkeys(("lambda_max",) + tuple(quantities)))
        self.k = k if ("top_k" in self.quantities or "grad_overlap" in self.quantities) else 1
        _validate_solver_options(self.k, tol, krylov_dim, num_matvecs, min_steps)
        self.tol, self.krylov_dim, self.num_matvecs = float(tol), krylov_dim, num_matvecs
        self.min_steps, self.linearize, self.fsync = min_steps, linearize, fsync
        self.preconditioner, self.trace_num_matvecs = preconditioner, trace_num_matvecs
        self.warm_start = warm_start
        self.info = (optimizer if isinstance(optimizer, OptimizerInfo) or optimizer is None
                     else optimizer_info(optimizer))
        self._key = key
        self._obj: Objective | None = None           # the objective on a dict of leaves
        self._warm: dict = {}
        self._records: list = []
        self._meta: list = []
        self._warned: set = set()
        self.log_path = None if log_path is None else Path(log_path)
        if self.log_path is not None:
            self._open_log(resume, overwrite)

    # ---- setup ------------------------------------------------------------------------

    @staticmethod
    def _validate(objective, every, quantities, key, k, preconditioner, trace_num_matvecs):
        if not isinstance(objective, Objective):
            raise TypeError(f"SharpnessTracker takes an Objective (the loss, a template of the "
                            f"parameters and the measurement data), got "
                            f"{type(objective).__name__}: pass ht.Objective(loss, params, "
                            "measure_data) or ht.Objective.from_nnx(model, output_loss, "
                            "measure_data).")
        if not isinstance(every, (int, np.integer)) or isinstance(every, bool) or every < 1:
            raise ValueError(f"every={every!r} must be a positive integer (steps between "
                             "measurements).")
        if isinstance(quantities, str):
            raise TypeError(f"quantities must be a tuple of names, got the string "
                            f"{quantities!r}; write quantities=({quantities!r},).")
        unknown = [q for q in quantities if q not in QUANTITIES]
        if unknown:
            raise ValueError(f"Unknown quantities {unknown}; choose from {list(QUANTITIES)}.")
        if key is None:
            raise ValueError("SharpnessTracker needs an explicit PRNG key: pass "
                             "key=jax.random.key(0).")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k={k!r} must be a positive integer.")
        if not (preconditioner in ("auto", None) or callable(preconditioner)):
            raise ValueError(f"preconditioner={preconditioner!r} must be 'auto', None or a "
                             "callable preconditioner(params, opt_state) -> P.")
        if not isinstance(trace_num_matvecs, int) or trace_num_matvecs < 2:
            raise ValueError(f"trace_num_matvecs={trace_num_matvecs!r} must be an integer >= "
                             "2 (the standard error needs two probes).")

    def _open_log(self, resume, overwrite):
        path = self.log_path
        header = {"type": "meta", "version": _LOG_VERSION, "every": self.every,
                  "quantities": list(self.quantities), "tol": self.tol, "k": self.k,
                  "identity": self._identity(), "created": time.time(), "resumed": False}
        if path.exists() and path.stat().st_size > 0:
            if overwrite:
                path.unlink()
            elif not resume:
                raise ValueError(f"The log {path} exists. Pass resume=True to append to it, "
                                 "overwrite=True to replace it, or another log_path.")
            else:
                _drop_partial_line(path)
                old = read_sharpness_log(path)
                _check_same_run(path, old.meta, header["identity"])
                self._records, self._meta = list(old.records), list(old.meta)
                header["resumed"] = True
        path.parent.mkdir(parents=True, exist_ok=True)
        self._meta.append(header)
        _append_line(path, header, self.fsync)

    def _identity(self) -> dict:
        """The settings that make two logs comparable: a resumed log must have the same."""
        leaves = tree.flat_paths(self.objective.params)
        layout = ";".join(f"{k}:{tuple(v.shape)}" for k, v in leaves.items())
        return jsonable({"every": self.every, "quantities": list(self.quantities),
                         "tol": self.tol, "k": self.k, "objective": self.objective.describe(),
                         "parameters": hashlib.sha256(layout.encode()).hexdigest()[:16]})

    # ---- public -----------------------------------------------------------------------

    @property
    def log(self) -> SharpnessLog:
        """All records so far (including those of a resumed log)."""
        return SharpnessLog(records=tuple(self._records), meta=tuple(self._meta))

    @property
    def records(self) -> list:
        return list(self._records)

    @property
    def total_matvecs(self) -> int:
        """HVPs spent by all measurements of this log."""
        return self.log.total_matvecs

    def due(self, step: int) -> bool:
        """Whether ``update(step, ...)`` would measure."""
        return int(step) % self.every == 0 and not self._logged(int(step))

    def update(self, step: int, params, opt_state=None, *, learning_rate=None, state=None,
               force: bool = False) -> dict | None:
        """Measure if ``step`` is due (or ``force``); return the record or ``None``.

        Args:
          step: the training step (an int).
          params: the current parameters (a pytree like the objective's), or the flax NNX
            model itself (then its non-parameter state, BatchNorm statistics included, is
            measured with it).
          opt_state: the optimizer state, or an ``nnx.Optimizer`` (for the preconditioner,
            and for hyperparameters recorded by ``optax.inject_hyperparams``).
          state: the model state at this step, for objectives with one (linen's
            ``batch_stats``; read from the model in the NNX form).
          learning_rate: the step size now (for the thresholds); defaults to an injected
            value or the probed optimizer's.
          force: measure even when not due (a step already logged is still skipped).
        """
        step = int(step)
        if not (force or step % self.every == 0):
            return None
        if self._logged(step):
            self._check_logged_params(step, _from_model(params, state)[0])
            return None
        return self.measure(step, params, opt_state, learning_rate=learning_rate, state=state)

    def measure(self, step: int, params, opt_state=None, *, learning_rate=None,
                state=None) -> dict:
        """Measure now, append the record to the log, and return it (see :meth:`update`)."""
        start = time.perf_counter()
        record = {"step": int(step), "time": time.time()}
        params, state = _from_model(params, state)
        opt_state = opt_state.opt_state if isinstance(opt_state, nnx.Optimizer) else opt_state
        if not bool(_all_finite(params)):          # a diverged run: nothing to measure
            return self._record_failure(record, "non-finite parameters", start)
        obj = self._objective(params, state)
        record["params_fingerprint"] = _fingerprint(params)
        op = hessian(obj, linearize=self.linearize)
        self._measure_hessian(record, op, obj.params)
        self._measure_preconditioned(record, op, params, obj.params, opt_state)
        if "trace" in self.quantities:
            self._measure_trace(record, op, obj.params)
        if "grad_overlap" in self.quantities or "loss" in self.quantities:
            self._measure_gradient(record, obj)
        self._thresholds(record, opt_state, learning_rate)
        record["num_matvecs"] = sum(v for n, v in record.items() if n.startswith("matvecs_"))
        record["wall_time"] = time.perf_counter() - start
        return self._append(record)

    # ---- measurements -----------------------------------------------------------------

    def _objective(self, params, state) -> Objective:
        """The measurement objective at ``params`` (and the model ``state``), as a function of
        a flat dict of the parameters' leaves (``Objective.restrict`` to all of them).

        Internally the vectors are plain dicts of arrays: a pytree such as ``nnx.State``
        builds Python ``Variable`` objects whenever a compiled step returns a vector, which
        cost about 7 ms per measurement on the wide digits MLP (160 unflattenings).
        """
        tree.check_same_structure(self.objective.params, params, what="The parameters")
        if state is None and jax.tree.leaves(self.objective.required_state):
            raise ValueError("This objective has model state the loss depends on (BatchNorm "
                             "statistics or other variables), which changes in training: pass "
                             "the model itself, tracker.update(step, model, optimizer), or "
                             "state=... with the parameters.")
        if self._obj is None:
            self._obj = self.objective.restrict(lambda path, leaf: True)
        return self._obj.with_params(tree.flat_paths(params), state=state)

    def _next_key(self):
        self._key, sub = jax.random.split(self._key)
        return sub

    def _solve(self, name, op, params, *, d=None, k_top=1, k_bottom=0):
        warm = self._warm.get(name) if self.warm_start else None
        res = _top(op, op.matvec_fn, params, warm, self._next_key(), d=d, k_top=k_top,
                   k_bottom=k_bottom, tol=self.tol, krylov_dim=self.krylov_dim,
                   num_matvecs=self.num_matvecs, min_steps=self.min_steps)
        self._warm[name] = res.warm
        return res

    def _measure_hessian(self, record, op, params):
        k_bottom = 1 if "lambda_min" in self.quantities else 0
        res = self._solve("hessian", op, params, k_top=self.k, k_bottom=k_bottom)
        k_top = min(self.k, op.dim)
        top = np.asarray(res.values[:k_top], np.float64)
        record.update(lambda_max=float(top[0]), lambda_max_residual=float(res.residuals[0]),
                      converged=bool(res.converged), matvecs_lambda_max=res.num_matvecs)
        if "top_k" in self.quantities:
            record["top_k"] = top.tolist()
        if k_bottom:
            record["lambda_min"] = float(res.values[-1])
            record["lambda_min_residual"] = float(res.residuals[-1])
        self._top_vectors = _first_rows(res.vectors, k_top)

    def _resolve_preconditioner(self, params, opt_state):
        if self.preconditioner is None:
            return None
        if callable(self.preconditioner):
            p = self.preconditioner(params, opt_state)
        elif opt_state is None:
            return None
        else:
            p = adaptive_preconditioner(opt_state, info=self.info)
        return None if p is None else tree.flat_paths(_align_to_params(p, params))

    def _measure_preconditioned(self, record, op, user_params, params, opt_state):
        p = self._resolve_preconditioner(user_params, opt_state)
        if p is None:
            if opt_state is not None and _find_states(opt_state, _ADAM_STATES):
                if "precond_lambda_max" in self.quantities:   # adam before its first step
                    record["precond_lambda_max"] = None
                return
            if "precond_lambda_max" in self.quantities:
                self._warn_once("precond", "precond_lambda_max was requested but no "
                                "preconditioner was found (pass the adaptive optimizer's "
                                "opt_state, or preconditioner=callable); recording None.")
                record["precond_lambda_max"] = None
            return
        d = inverse_sqrt(p, params)
        res = self._solve("precond", op, params, d=d)
        record.update(precond_lambda_max=float(res.values[0]),
                      precond_residual=float(res.residuals[0]),
                      matvecs_precond=res.num_matvecs)

    def _measure_trace(self, record, op, params):
        mean, stderr, n = _trace(op, self._next_key(), self.trace_num_matvecs)
        record.update(trace=mean, trace_stderr=stderr, matvecs_trace=n)

    def _measure_gradient(self, record, obj):
        loss, grad = value_and_grad(obj)
        record["loss"] = float(loss)
        record["grad_norm"] = float(tree.norm(grad))
        if "grad_overlap" in self.quantities:
            record["grad_overlap"] = float(_overlap(self._top_vectors, grad))

    def _thresholds(self, record, opt_state, learning_rate):
        inj = _injected_hyperparams(opt_state) if opt_state is not None else {}
        info = self.info or _info_from_state(opt_state, inj)
        eta = learning_rate if learning_rate is not None else inj.get("learning_rate",
                                                                      info.learning_rate)
        record["learning_rate"] = None if eta is None else float(eta)
        if info.kind == "unknown" and eta is not None:
            self._warn_once("unknown", "The optimizer's momentum is unknown, so no stability "
                            "threshold is recorded: pass optimizer=<the optax optimizer> to "
                            "SharpnessTracker.")
        value = info.threshold(None if eta is None else float(eta))
        record["threshold"] = None if info.adaptive else value
        record["precond_threshold"] = value if info.adaptive else None

    def _record_failure(self, record, err, start):
        self._warn_once("nonfinite", f"Skipping measurements at non-finite parameters "
                        f"(first at step {record['step']}).")
        self._warm = {}
        record.update(lambda_max=None, converged=False, num_matvecs=0, error=str(err)[:200],
                      wall_time=time.perf_counter() - start)
        return self._append(record)

    def _warn_once(self, tag, message):
        if tag not in self._warned:
            self._warned.add(tag)
            warnings.warn(message, RuntimeWarning, stacklevel=4)

    def _append(self, record):
        record = jsonable(record)
        self._records.append(record)
        if self.log_path is not None:
            _append_line(self.log_path, record, self.fsync)
        return record

    def _check_logged_params(self, step, params):
        """A step already in the log is skipped only if these are (up to round-off) the
        parameters measured then: anything else is another run given this log."""
        old = next((r.get("params_fingerprint") for r in self._records
                    if r["step"] == step), None)
        if old is None:
            return
        new = _fingerprint(params)
        if not np.allclose(new, old, rtol=1e-3, atol=1e-6 * abs(old[0])):
            raise ValueError(
                f"Step {step} is already in the log {self.log_path}, measured at other "
                f"parameters (norm {old[0]:.6g} then, {new[0]:.6g} now): this is another run. "
                "Give it its own log_path, or pass overwrite=True to replace the log.")

    def _logged(self, step: int) -> bool:
        if not self._records:
            return False
        steps = self.__dict__.setdefault("_steps_cache", set())
        if len(steps) != len(self._records):
            steps.clear()
            steps.update(r["step"] for r in self._records)
        return step in steps


def _info_from_state(opt_state, inj: dict) -> OptimizerInfo:
    """An :class:`OptimizerInfo` guessed from state types (no learning rate)."""
    if opt_state is None:
        return OptimizerInfo(kind="sgd")
    if _find_states(opt_state, _ADAM_STATES):
        return OptimizerInfo(kind="adam", momentum=inj.get("b1", 0.9), adaptive=True)
    adaptive = bool(_find_states(opt_state, _RMS_STATES + _STDDEV_STATES + _RSS_STATES))
    kind = "rmsprop" if adaptive else "sgd"
    if _find_states(opt_state, ("TraceState",)):
        if "momentum" not in inj:
            return OptimizerInfo(kind="unknown", adaptive=adaptive)
        return OptimizerInfo(kind=kind if adaptive else "momentum", momentum=inj["momentum"],
                             adaptive=adaptive)
    return OptimizerInfo(kind=kind, adaptive=adaptive)


@jax.jit
def _all_finite(params):
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(a)) for a in jax.tree.leaves(params)]))


def _fingerprint(params) -> list:
    """Three numbers that tell parameter vectors apart (norm, sum, sum of magnitudes),
    stable under the round-off of a replayed run."""
    return [float(v) for v in _fingerprint_device(params)]


@jax.jit
def _fingerprint_device(params):
    leaves = [a.astype(jnp.float32).ravel() for a in jax.tree.leaves(params)]
    return jnp.stack([jnp.sqrt(sum(jnp.vdot(a, a) for a in leaves)),
                      sum(jnp.sum(a) for a in leaves), sum(jnp.sum(jnp.abs(a)) for a in leaves)])


def _check_same_run(path, meta, identity):
    """Refuse to resume a log written with other settings or another model."""
    previous = next((m["identity"] for m in reversed(meta) if "identity" in m), None)
    if previous is None or previous == identity:
        return
    changed = sorted(k for k in set(previous) | set(identity)
                     if previous.get(k) != identity.get(k))
    detail = "; ".join(f"{k}: {previous.get(k)!r} in the log, {identity.get(k)!r} now"
                       for k in changed)
    raise ValueError(f"The log {path} was written by another run ({detail}). Give this run "
                     "its own log_path, or pass overwrite=True to replace the log.")


@functools.partial(jax.jit, static_argnums=(1,))
def _first_rows(vectors, k):
    return jax.tree.map(lambda a: a[:k], vectors)


@jax.jit
def _overlap(vectors, g):
    c = tree.basis_dot(vectors, g)
    return jnp.sum(c * c) / tree.vdot(g, g)


def _trace(op: CurvatureOperator, key, num_matvecs: int):
    """Trace estimate, standard error, matvecs (Hutch++; Hutchinson under 4 products)."""
    est = trace(op, method="hutch++" if num_matvecs >= 4 else "hutchinson",
                num_matvecs=num_matvecs, key=key)
    return float(est.value), float(est.stderr), int(est.num_matvecs)


def _from_model(params, state):
    """``(params, state)`` of an NNX model (the ``nnx.Param`` variables and the rest but the
    RNG state, as ``Objective.from_nnx`` splits it), or the arguments as given."""
    if not isinstance(params, nnx.Module):
        return params, state
    _, model_params, _, model_state = nnx.split(params, nnx.Param, nnx.RngState, ...)
    return model_params, (model_state if jax.tree.leaves(model_state) else None)
