"""How every exercise check works: run the student's function next to the course's helper, and say what differs.

A check is a list of :class:`Case` inputs (random ones and edge cases: padding, ties, extremes) and a list of
:class:`Mistake` s, the errors students actually make. :func:`run_check` calls the student's function on each case
(on copies, so an in-place edit cannot change the course's answer) and compares its output with the reference
helper's:

- the skeleton (``raise NotImplementedError``) prints "not implemented yet" and raises nothing, so a notebook
  stored with the skeleton runs clean;
- a known mistake is named, with what to look at next ("your log-probs look averaged over tokens; ...");
- any other difference names the input, the expected and the observed values, and a hint;
- a pass says so.

It never prints the solution, only values. The result is a :class:`CheckResult`: truthy when the function passed,
with ``status`` and ``mistake`` for tests.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

PASSED, NOT_IMPLEMENTED, FAILED = "passed", "not implemented", "failed"


@dataclass
class Case:
    """One input to the student's function: keyword arguments, and a label saying what is special about it."""

    label: str
    args: dict


@dataclass
class Mistake:
    """A common mistake: its ``name``, what to look at (``advice``), and how to recognise it.

    ``wrong`` is a function with the exercise's signature that makes the mistake (or a list of such functions, the
    ways students make it): the student's output matching one (and not the reference) on a case names the
    mistake. ``spot(out, args)`` is for mistakes that values alone do not show (a tensor that is not detached, a
    gradient that is nan): it gets the output and the very inputs the student's function was given, and returns
    True when they show the mistake.
    """

    name: str
    advice: str
    wrong: Callable | Sequence[Callable] | None = None
    spot: Callable | None = None


@dataclass
class CheckResult:
    check: str
    status: str
    message: str
    mistake: str | None = None
    case: str | None = None

    def __bool__(self) -> bool:
        return self.status == PASSED

    def __repr__(self) -> str:  # short: run_check has already printed the message
        return f"<{self.check}: {self.status}>"


@dataclass
class Exercise:
    """What :func:`run_check` needs: the exercise's ``name`` (the function to write), the ``reference`` helper (same
    signature), the ``cases``, the ``mistakes`` and a general ``hint``. ``compare(out, expected, args)`` returns None
    when ``out`` is right, else what is wrong with it; the default compares values with :func:`differs`."""

    name: str
    reference: Callable
    cases: Sequence[Case]
    mistakes: Sequence[Mistake] = field(default_factory=list)
    hint: str = ""
    compare: Callable | None = None

    def compare_output(self, out, expected, args) -> str | None:
        return self.compare(out, expected, args) if self.compare else differs(out, expected)


def _as_tensor(x):
    if isinstance(x, torch.Tensor):
        return x.detach().double()
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return None
    return torch.tensor(float(x), dtype=torch.float64)


def differs(out, expected, atol: float = 1e-5, rtol: float = 1e-4) -> str | None:
    """None if ``out`` equals ``expected`` (tensors, numbers, or tuples/dicts of them) to the tolerance, else why not."""
    if isinstance(expected, Mapping):
        if not isinstance(out, Mapping):
            return f"returned a {type(out).__name__}, expected a dict with keys {sorted(expected)}"
        if set(out) != set(expected):
            return f"returned keys {sorted(out)}, expected {sorted(expected)}"
        for key in expected:
            why = differs(out[key], expected[key], atol, rtol)
            if why:
                return f"[{key!r}] {why}"
        return None
    if isinstance(expected, tuple):
        if not isinstance(out, (tuple, list)) or len(out) != len(expected):
            return f"returned {type(out).__name__}, expected a tuple of {len(expected)} values"
        for i, (o, e) in enumerate(zip(out, expected)):
            why = differs(o, e, atol, rtol)
            if why:
                return f"[{i}] {why}"
        return None
    o, e = _as_tensor(out), _as_tensor(expected)
    if o is None:
        return f"returned a {type(out).__name__}, expected a tensor or a number"
    if isinstance(expected, torch.Tensor) and expected.dim() and o.shape != e.shape:
        return f"has shape {tuple(o.shape)}, expected {tuple(e.shape)}"
    if o.numel() != e.numel():
        return f"has {o.numel()} values, expected {e.numel()}"
    o = o.reshape(e.shape)
    close = torch.isclose(o, e, atol=atol, rtol=rtol, equal_nan=True)
    if close.all():
        return None
    if e.dim() == 0:
        return "has the wrong value"
    rows = (~close).reshape(len(e), -1).any(-1).nonzero().flatten().tolist()
    where = f"row {rows[0]}" if len(rows) == 1 else f"rows {rows}"
    return f"has the wrong values in {where} (of {len(e)}; the others match)" if len(rows) < len(e) \
        else "has the wrong values in every row"


def show(x, limit: int = 8) -> str:
    """A short, readable rendering of a value (tensors to 4 significant digits, first ``limit`` entries)."""
    if isinstance(x, Mapping):
        return "{" + ", ".join(f"{k!r}: {show(v, limit)}" for k, v in x.items()) + "}"
    if isinstance(x, (tuple, list)):
        return "(" + ", ".join(show(v, limit) for v in x) + ")"
    if isinstance(x, torch.Tensor):
        flat = x.detach().flatten().tolist()
        body = ", ".join(_num(v) for v in flat[:limit]) + (", ..." if len(flat) > limit else "")
        return f"tensor of shape {tuple(x.shape)}: [{body}]" if x.dim() else f"tensor({body})"
    if isinstance(x, float):
        return _num(x)
    return repr(x)


def _num(v) -> str:
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _copy(args: dict) -> dict:
    """Fresh copies of the inputs (gradients kept), so the student's function cannot change the reference's."""
    out = {}
    for k, v in args.items():
        if isinstance(v, torch.Tensor):
            c = v.detach().clone()
            out[k] = c.requires_grad_(v.requires_grad)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _caller(student: Callable) -> Callable[[dict], object]:
    """Call the student's function with the case's arguments by name, or, if its parameters have other names, in
    the skeleton's order (every case lists its arguments in that order)."""
    def call(args: dict):
        try:
            inspect.signature(student).bind(**args)
        except TypeError:
            return student(*args.values())
        except ValueError:  # no signature to inspect (a builtin): try names
            pass
        return student(**args)
    return call


def no_gradient(out, args) -> bool:
    """``spot`` for a loss that cannot train: the inputs carry gradients, the output (or its first entry) does not."""
    loss = out[0] if isinstance(out, (tuple, list)) and out else out
    needs = any(isinstance(v, torch.Tensor) and v.requires_grad for v in args.values())
    return needs and not (isinstance(loss, torch.Tensor) and loss.requires_grad)


def nonfinite_gradient(arg: str) -> Callable:
    """``spot`` for a loss whose forward value may be fine but whose gradient with respect to input ``arg`` is not
    finite (exp of garbage masked *after* the exp: 0 · inf = nan in backward)."""
    def spot(out, given) -> bool:
        x = given.get(arg)
        if not (isinstance(out, torch.Tensor) and out.requires_grad and out.dim() == 0 and isinstance(x, torch.Tensor)
                and x.requires_grad):
            return False
        (grad,) = torch.autograd.grad(out, x, retain_graph=True, allow_unused=True)
        return grad is not None and not torch.isfinite(grad).all()
    return spot


NO_GRADIENT = "the loss carries no gradient"
NO_GRADIENT_ADVICE = ("It was computed under torch.no_grad(), detached, or turned into a number (.item(), float()): "
                      "backward() would have nothing to train. Return the tensor itself.")


def _inputs(args: dict) -> str:
    return "\n".join(f"      {k} = {show(v)}" for k, v in args.items())


def run_check(exercise: Exercise, student: Callable, verbose: bool = True) -> CheckResult:
    """Check ``student`` against ``exercise`` (see the module docstring); print the verdict and return it."""
    result = _judge(exercise, student)
    if verbose:
        print(result.message)
    return result


def _judge(ex: Exercise, student: Callable) -> CheckResult:
    title = f"check_{ex.name}"
    if not callable(student):
        return CheckResult(title, FAILED, f"✗ {title}: pass your function itself, e.g. {title}({ex.name}), "
                                          f"not {type(student).__name__}")
    call = _caller(student)
    for case in ex.cases:
        args = _copy(case.args)
        try:
            out = call(args)
        except NotImplementedError:
            name = getattr(student, "__name__", ex.name)
            return CheckResult(title, NOT_IMPLEMENTED, f"… {title}: not implemented yet. Fill in `{name}` (replace "
                                                       f"the `raise NotImplementedError` line) and run this cell again.")
        except Exception as err:  # the student's bug, shown to them with the input that caused it
            return CheckResult(title, FAILED, f"✗ {title}: on {case.label}, your function raised "
                                              f"{type(err).__name__}: {err}\n    inputs:\n{_inputs(case.args)}\n"
                                              f"    hint: {ex.hint}", case=case.label)
        if out is None:
            return CheckResult(title, FAILED, f"✗ {title}: on {case.label}, your function returned None. "
                                              "Did you forget the `return`?", case=case.label)
        expected = ex.reference(**_copy(case.args))
        why = ex.compare_output(out, expected, case.args)
        for m in ex.mistakes:
            if _shows(m, out, expected, case.args, ex, given=args):
                return CheckResult(title, FAILED, f"✗ {title}: on {case.label}: {m.name}. {m.advice}\n"
                                                  f"    inputs:\n{_inputs(case.args)}\n    expected {show(expected)}\n"
                                                  f"    yours    {show(out)}", mistake=m.name, case=case.label)
        if why:
            return CheckResult(title, FAILED, f"✗ {title}: on {case.label}, your output {why}.\n"
                                              f"    inputs:\n{_inputs(case.args)}\n    expected {show(expected)}\n"
                                              f"    yours    {show(out)}\n    hint: {ex.hint}", case=case.label)
    return CheckResult(title, PASSED, f"✓ {title}: passed on all {len(ex.cases)} cases "
                                      f"({', '.join(c.label for c in ex.cases)}).")


def _shows(m: Mistake, out, expected, args: dict, ex: Exercise, given: dict) -> bool:
    """Does the output show mistake ``m`` on this case? ``args`` are the case's inputs, ``given`` the copies the
    student's function received (``spot`` needs those, to follow gradients). A ``wrong`` version counts only where
    it differs from the reference, so a case that cannot tell the two apart never blames the student."""
    if m.spot is not None and m.spot(out, given):
        return True
    variants = m.wrong if isinstance(m.wrong, (list, tuple)) else [m.wrong] if m.wrong else []
    for variant in variants:
        try:
            wrong = variant(**_copy(args))
        except Exception:
            continue
        if ex.compare_output(wrong, expected, args) is not None and ex.compare_output(out, wrong, args) is None:
            return True
    return False
