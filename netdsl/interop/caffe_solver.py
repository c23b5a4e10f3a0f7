"""A Caffe SolverParameter prototxt (`netdsl import NET --solver SOLVER`) as train { }.

Caffe counts in iterations, netdsl in epochs. Where the data layer's batch and the data
set's size are known (one of Caffe's example data bases, see caffe.KNOWN_SOURCES), an
iteration count becomes epochs = iterations x batch / images, rounded to a whole epoch,
and the line says what it was. Where they are not, the setting is left out and a comment
says what Caffe had. lr_policy:

    fixed      constant                                     exact
    step       step(step_size=stepsize in epochs, gamma)    exact up to the rounding
    multistep  multistep(milestones=stepvalues in epochs)   exact up to the rounding
    poly       poly(power)                                  exact (both are a fraction of
                                                            the whole run)
    exp        exponential(gamma^(iterations per epoch))    per epoch, not per iteration
    inv        exponential(gamma') through Caffe's rates at the first and last epoch:
               an approximation; the comment gives its largest deviation
    sigmoid    refused (a located error): netdsl has no such schedule

Solver types SGD, Nesterov and Adam convert; AdaGrad, RMSProp and AdaDelta, L1
regularisation and gradient clipping are located errors in the solver file. Testing,
logging, snapshots and the device (test_iter, display, snapshot, solver_mode ...) are
netdsl's own business: they are named in a comment and not converted.
"""

from __future__ import annotations

import math

from ..errors import NetError
from ..source import Source
from . import ForeignLayer, ImportedNet, number

# Settings of the solver that have no place in train { }: named in one comment.
_IGNORED = ("net", "train_net", "test_net", "net_param", "train_net_param", "test_net_param",
            "test_iter", "test_interval", "test_initialization", "test_compute_loss",
            "test_state", "train_state", "display", "average_loss", "debug_info",
            "snapshot", "snapshot_prefix", "snapshot_diff", "snapshot_format",
            "snapshot_after_train", "solver_mode", "device_id", "layer_wise_reduce")  # fmt: skip
_KNOWN = {"base_lr", "momentum", "momentum2", "delta", "weight_decay", "lr_policy", "gamma",
          "power", "stepsize", "stepvalue", "max_iter", "type", "solver_type",
          "regularization_type", "random_seed", "iter_size", "clip_gradients"}  # fmt: skip


def apply(path: str, net: ImportedNet, data: ForeignLayer | None) -> None:
    """Add the solver's settings to net.train (NetError at SOLVER:line:col)."""
    from .prototxt import parse_prototxt

    sv = parse_prototxt(Source.from_file(path))
    for f in sv.fields:
        if f.key not in _KNOWN and f.key not in _IGNORED:
            raise NetError(f"solver setting '{f.key}' is not supported", f.loc)

    def num(key: str, default: float | None = None, lo: float | None = None,
            hi: float | None = None, open_hi: bool = False) -> float | None:  # fmt: skip
        f = sv.one(key)
        if f is None:
            return default
        v = f.value
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise NetError(f"{key} must be a number", f.vloc)
        bad = (lo is not None and v < lo) or (hi is not None and (v >= hi if open_hi else v > hi))
        if bad:
            rng = f"at least {number(lo)}" if lo is not None else ""
            if hi is not None:
                rng += (" and " if rng else "") + (f"below {number(hi)}" if open_hi
                                                  else f"at most {number(hi)}")  # fmt: skip
            raise NetError(f"{key} {number(v)} is out of range for netdsl ({rng})", f.vloc)
        return v

    train, notes = [], []
    kind = str(sv.get("type", sv.get("solver_type", "SGD"))).upper()
    type_f = sv.one("type") or sv.one("solver_type")
    if kind not in ("SGD", "NESTEROV", "ADAM"):
        raise NetError(f"solver type {sv.get('type', sv.get('solver_type'))} is not supported",
                       type_f.vloc, hint="netdsl's optimizers are sgd (with nesterov) and "
                       "adam")  # fmt: skip
    if str(sv.get("regularization_type", "L2")) != "L2":
        raise NetError("L1 regularisation is not supported; netdsl's weight decay is L2",
                       sv.one("regularization_type").vloc)  # fmt: skip
    if sv.one("clip_gradients") is not None and num("clip_gradients", lo=-1e300) >= 0:
        raise NetError("gradient clipping is not supported", sv.one("clip_gradients").loc)
    if sv.one("base_lr") is None:
        raise NetError(f"{path}: the solver has no base_lr", hint="e.g. base_lr: 0.01")
    lr = num("base_lr", lo=1e-300)
    wd = num("weight_decay", 0.0, lo=0.0)
    if kind == "ADAM":
        args = [f"lr={number(lr)}", f"beta1={number(num('momentum', 0.9, 0.0, 1.0, True))}",
                f"beta2={number(num('momentum2', 0.999, 0.0, 1.0, True))}",
                f"eps={number(num('delta', 1e-8, 1e-300))}"]  # fmt: skip
    else:
        args = [f"lr={number(lr)}", f"momentum={number(num('momentum', 0.0, 0.0, 1.0, True))}"]
        if kind == "NESTEROV":
            args.append("nesterov=true")
    if wd:
        args.append(f"weight_decay={number(wd)}")
    train.append(f"optimizer {'adam' if kind == 'ADAM' else 'sgd'}({', '.join(args)})")

    # iterations -> epochs
    from .caffe import known_data

    known = known_data(data)
    batch = _batch(data)
    iter_size = int(num("iter_size", 1, lo=1))
    if iter_size > 1 and batch:
        batch *= iter_size
        train.append(f"batch {batch}  # Caffe's batch x iter_size {iter_size}")
        net.train[:] = [t for t in net.train if not t.startswith("batch ")]
    ipe = known[1] / batch if known and batch else None  # iterations per epoch

    def epochs(iters: float) -> float | None:
        return None if ipe is None else iters / ipe

    why = ("the data set's size is unknown" if batch else "the net has no data layer with a "
           "batch_size")  # fmt: skip
    max_iter = num("max_iter", None, lo=1)
    total = None
    if max_iter is not None:
        exact = epochs(max_iter)
        if exact is None:
            notes.append(f"epochs: Caffe's max_iter {int(max_iter)} not converted ({why})")
        else:
            total = max(1, round(exact))
            train.append(f"epochs {total}  # max_iter {int(max_iter)} x batch {batch} = "
                         f"{_e(exact)} epochs of {known[0]}'s {known[1]:,} images")  # fmt: skip
    train += _schedule(sv, num, epochs, total, why, notes)
    seed = sv.one("random_seed")
    if seed is not None and isinstance(seed.value, int) and seed.value >= 0:
        train.append(f"seed {seed.value}")
    ignored = [f.key for f in sv.fields if f.key in _IGNORED]
    if ignored:
        names = ", ".join(dict.fromkeys(ignored))
        notes.append(f"not converted from the solver: {names} (testing, logging, snapshots, "
                     "device: netdsl's flags and reports)")  # fmt: skip
    net.train += train
    net.train_comments.insert(0, f"from the solver {path}")
    net.train_comments += notes


def _e(x: float) -> str:
    return f"{x:.2f}".rstrip("0").rstrip(".")


def _batch(data: ForeignLayer | None) -> int | None:
    if data is None:
        return None
    for k, v in data.params.items():
        if k.endswith("_param") and isinstance(v, dict) and "batch_size" in v:
            return int(v["batch_size"])
    return None


def _schedule(sv, num, epochs, total, why, notes) -> list[str]:
    """The schedule line of lr_policy (see the module's table), or none and a note."""
    f = sv.one("lr_policy")
    policy = str(f.value) if f else "fixed"
    if policy == "fixed":
        return ["schedule constant"]
    if policy == "poly":
        return [f"schedule poly(power={number(num('power', 1.0, lo=0.0))})"]
    if policy not in ("step", "multistep", "exp", "inv"):
        raise NetError(f"lr_policy '{policy}' is not supported", f.vloc,
                       hint="netdsl's schedules: constant, step, multistep, exponential, "
                       "poly, cosine, plateau")  # fmt: skip
    gamma = num("gamma", None, lo=1e-300, hi=1.0 if policy != "inv" else None)
    if gamma is None:
        raise NetError(f"lr_policy '{policy}' needs gamma", f.vloc)
    if epochs(1) is None:
        notes.append(f"schedule: Caffe's lr_policy {policy} not converted ({why}); write it "
                     "in epochs")  # fmt: skip
        return []
    if policy == "step":
        step = num("stepsize", None, lo=1)
        if step is None:
            raise NetError("lr_policy 'step' needs stepsize", f.vloc)
        e = epochs(step)
        return [f"schedule step(step_size={max(1, round(e))}, gamma={number(gamma)})  # "
                f"stepsize {int(step)} iterations = {_e(e)} epochs"]  # fmt: skip
    if policy == "multistep":
        fields = sv.all("stepvalue")
        if not fields:
            raise NetError("lr_policy 'multistep' needs stepvalue", f.vloc)
        marks = []
        for sf in fields:
            m = max(1, round(epochs(sf.value)))
            if marks and m <= marks[-1]:
                raise NetError(f"stepvalue {sf.value} is epoch {m}, as the one before: "
                               "netdsl's milestones are whole epochs", sf.vloc)  # fmt: skip
            marks.append(m)
        shown = ", ".join(_e(epochs(sf.value)) for sf in fields)
        return [f"schedule multistep(milestones=[{', '.join(map(str, marks))}], "
                f"gamma={number(gamma)})  # stepvalues at {shown} epochs"]  # fmt: skip
    ipe = 1 / epochs(1)
    if policy == "exp":
        g = float(f"{gamma**ipe:.6g}")
        return [f"schedule exponential(gamma={number(g)})  # Caffe's gamma {number(gamma)} per "
                "iteration, here per epoch"]  # fmt: skip
    # inv: base_lr * (1 + gamma * iter)^-power, sampled at each epoch's start
    power = num("power", None, lo=0.0)
    if power is None:
        raise NetError("lr_policy 'inv' needs power", f.vloc)
    if not total or total < 2:
        notes.append("schedule: Caffe's lr_policy inv not converted (training is one epoch)")
        return []
    caffe = [(1 + gamma * e * ipe) ** -power for e in range(total)]
    g = float(f"{caffe[-1] ** (1 / (total - 1)):.6g}")
    worst = max(abs(g**e / c - 1) for e, c in enumerate(caffe))
    if not 0 < g <= 1:
        raise NetError("this lr_policy 'inv' cannot be approximated by netdsl's schedules",
                       f.vloc)  # fmt: skip
    return [f"schedule exponential(gamma={number(g)})  # approximates Caffe's inv (gamma "
            f"{number(gamma)}, power {number(power)}) per epoch: within "
            f"{math.ceil(worst * 1000) / 10:g}%"]  # fmt: skip
