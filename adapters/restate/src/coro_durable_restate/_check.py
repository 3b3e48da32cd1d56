"""What Restate cannot express, checked when a run is started.

Every coro_durable effect kind maps onto Restate (see ``_driver``), and since steps run inside
the ``run`` handler itself (on whichever endpoint serves the run, re-created by the workflow
code on replay), any callable can be a step: lambdas, closures, partials and bound methods
included. What Restate cannot express is a step *attempt allowed to run longer than Restate lets
an invocation stay silent*: after ``inactivity_timeout + abort_timeout`` without progress Restate
aborts the attempt and runs it again, so a ``cd.call(..., timeout=T)`` with a larger ``T`` would
never see its timeout fire; it would be aborted and re-run forever.

:func:`check_workflow` reads the workflow's source (and that of module-level coroutine functions
it awaits) and raises ``EffectNotAllowedError`` before anything starts when a ``cd.call`` has a
constant ``timeout=`` over that limit. A timeout computed at run time is checked at the effect
instead (``_driver``), where the error is raised at the await.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import operator
import textwrap
from collections.abc import Callable
from typing import Any

import coro_durable as cd
from coro_durable import engine
from coro_durable.errors import EffectNotAllowedError

from ._driver import step_limit_error

__all__ = ["check_workflow"]

_MISSING = object()
_OPERATORS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _bound_names(tree: ast.AST) -> set[str]:
    """Names assigned anywhere in a function: their values are only known at run time."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
    return names


def _evaluate(expr: ast.expr, scope: dict[str, Any], local: set[str]) -> Any:
    """The object a name or dotted attribute refers to (modules and classes only), or _MISSING."""
    if isinstance(expr, ast.Name):
        if expr.id in local:
            return _MISSING
        if expr.id in scope:
            return scope[expr.id]
        return getattr(builtins, expr.id, _MISSING)
    if isinstance(expr, ast.Attribute):
        base = _evaluate(expr.value, scope, local)
        if inspect.ismodule(base) or isinstance(base, type):
            return getattr(base, expr.attr, _MISSING)
    return _MISSING


def _number(expr: ast.expr, scope: dict[str, Any], local: set[str]) -> float | None:
    """A timeout known without running anything: literals, module constants, + - * /."""
    if isinstance(expr, ast.Constant):
        value: Any = expr.value
    elif isinstance(expr, ast.BinOp) and type(expr.op) in _OPERATORS:
        left, right = _number(expr.left, scope, local), _number(expr.right, scope, local)
        if left is None or right is None:
            return None
        try:
            value = _OPERATORS[type(expr.op)](left, right)
        except ArithmeticError:
            return None
    else:
        value = _evaluate(expr, scope, local)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _function_scope(fn: Callable[..., Any]) -> dict[str, Any]:
    scope: dict[str, Any] = dict(getattr(fn, "__globals__", {}))
    code = getattr(fn, "__code__", None)
    for name, cell in zip(getattr(code, "co_freevars", ()), getattr(fn, "__closure__", None) or (), strict=False):  # fmt: skip
        try:
            scope[name] = cell.cell_contents
        except ValueError:  # an empty cell
            pass
    return scope


def check_workflow(
    fn: Callable[..., Any], step_limit: float, *, _seen: set[Any] | None = None
) -> None:
    """Raise EffectNotAllowedError if ``fn`` (or a module-level coroutine function it awaits)
    issues a step whose constant ``timeout=`` exceeds ``step_limit`` seconds. Best effort: it
    reads the source; timeouts computed at run time are checked at the effect."""
    seen = _seen if _seen is not None else set()
    if fn in seen:
        return
    seen.add(fn)
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return
    if not tree.body:
        return
    scope = _function_scope(fn)
    local = _bound_names(tree.body[0])
    if isinstance(tree.body[0], ast.AsyncFunctionDef | ast.FunctionDef):
        local.discard(tree.body[0].name)
    where = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}"
    code = getattr(fn, "__code__", None)
    first_line = code.co_firstlineno if code is not None else 1
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        target = _evaluate(node.func, scope, local)
        if target is cd.call and node.args:
            for keyword in node.keywords:
                if keyword.arg != "timeout":
                    continue
                timeout = _number(keyword.value, scope, local)
                if timeout is not None and timeout > step_limit:
                    step = _evaluate(node.args[0], scope, local)
                    name = engine.step_name(step) if callable(step) else ast.unparse(node.args[0])
                    line = node.lineno + first_line - 1
                    raise EffectNotAllowedError(
                        step_limit_error(name, timeout, step_limit, f"{where} (line {line}): ")
                        + ". Nothing was started"
                    )
        elif (
            inspect.iscoroutinefunction(target)
            and not getattr(target, "__module__", "").startswith("coro_durable")
            and "<locals>" not in getattr(target, "__qualname__", "<locals>")
        ):
            check_workflow(target, step_limit, _seen=seen)  # a helper coroutine it awaits
