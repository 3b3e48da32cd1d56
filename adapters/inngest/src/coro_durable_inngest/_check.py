"""What Inngest cannot express, found when a run is started rather than half-way through it.

On Inngest every step runs inside the endpoint process that replays the workflow, so any callable
works as a step (a lambda or a bound method is rebuilt by the replay itself). The limits are
Inngest's own (its usage limits page): a step may run at most 2 hours, and a sleep may last at most
a year (7 days on the free plan). So:

- ``cd.call(fn, ..., timeout=T)`` with T above ``max_step_timeout`` (default 7200 s), and
- ``cd.sleep(S)`` with S above ``max_sleep`` (default 365 days)

are rejected by ``rt.start`` with EffectNotAllowedError when T or S is a constant expression in
the workflow's source (or in a module-level coroutine function it awaits), before anything is
started. Values only known at run time are checked at the effect, where the same error is raised
at the await (``_driver.RunDriver._plan_leaf``). Long *signal* waits need no limit: a wait is
re-armed in windows of at most ``signal_recheck`` seconds.
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
from coro_durable.errors import EffectNotAllowedError

from ._config import InngestSettings

__all__ = ["check_workflow"]

_MISSING = object()
_OPERATORS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
}


def _locals(tree: ast.AST) -> set[str]:
    """Names bound inside the function: their values are only known at run time."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and not isinstance(node.ctx, ast.Load):
            names.add(node.id)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
        elif isinstance(node, ast.alias):
            names.add((node.asname or node.name).split(".")[0])
    return names


def _lookup(expr: ast.expr, scope: dict[str, Any], local: set[str]) -> Any:
    """The object a Name or dotted Attribute refers to (modules and classes only)."""
    if isinstance(expr, ast.Name):
        if expr.id in local:
            return _MISSING
        return scope.get(expr.id, getattr(builtins, expr.id, _MISSING))
    if isinstance(expr, ast.Attribute):
        base = _lookup(expr.value, scope, local)
        if inspect.ismodule(base) or isinstance(base, type):
            return getattr(base, expr.attr, _MISSING)
    return _MISSING


def _number(expr: ast.expr, scope: dict[str, Any], local: set[str]) -> float | None:
    """The value of a constant arithmetic expression (module-level constants allowed)."""
    if isinstance(expr, ast.Constant):
        value = expr.value
    elif isinstance(expr, ast.Name | ast.Attribute):
        value = _lookup(expr, scope, local)
    elif isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.USub | ast.UAdd):
        inner = _number(expr.operand, scope, local)
        return None if inner is None else (-inner if isinstance(expr.op, ast.USub) else inner)
    elif isinstance(expr, ast.BinOp) and type(expr.op) in _OPERATORS:
        left, right = _number(expr.left, scope, local), _number(expr.right, scope, local)
        if left is None or right is None:
            return None
        try:
            return float(_OPERATORS[type(expr.op)](left, right))
        except (ArithmeticError, ValueError):
            return None
    else:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _scope(fn: Callable[..., Any]) -> dict[str, Any]:
    scope: dict[str, Any] = dict(getattr(fn, "__globals__", {}))
    code = getattr(fn, "__code__", None)
    for name, cell in zip(
        code.co_freevars if code else (), getattr(fn, "__closure__", None) or (), strict=False
    ):
        try:
            scope[name] = cell.cell_contents
        except ValueError:
            pass
    return scope


def check_workflow(
    fn: Callable[..., Any], settings: InngestSettings, *, _seen: set[Any] | None = None
) -> None:
    """Raise EffectNotAllowedError if ``fn`` (or a coroutine function it awaits) has a step
    timeout or a sleep Inngest cannot express. Best effort: it reads the source."""
    seen = _seen if _seen is not None else set()
    if fn in seen:
        return
    seen.add(fn)
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return
    scope = _scope(fn)
    local = _locals(tree.body[0]) if tree.body else set()
    where = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}"
    code = getattr(fn, "__code__", None)
    first_line = code.co_firstlineno if code is not None else 1
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        target = _lookup(node.func, scope, local)
        line = node.lineno + first_line - 1
        problem = None
        if target is cd.call:
            for kw in node.keywords:
                if kw.arg == "timeout":
                    value = _number(kw.value, scope, local)
                    if value is not None and value > settings.max_step_timeout:
                        problem = (
                            f"a step with timeout={value:g}s, but an Inngest step may run at most "
                            f"{settings.max_step_timeout:g}s (max_step_timeout); split the work "
                            "into shorter steps"
                        )
        elif target is cd.sleep and node.args:
            value = _number(node.args[0], scope, local)
            if value is not None and value > settings.max_sleep:
                problem = (
                    f"cd.sleep({value:g}), but Inngest sleeps at most {settings.max_sleep:g}s "
                    "(max_sleep: a year, 7 days on the free plan); sleep in shorter pieces"
                )
        elif (
            inspect.iscoroutinefunction(target)
            and not getattr(target, "__module__", "").startswith("coro_durable")
            and "<locals>" not in getattr(target, "__qualname__", "<locals>")
        ):
            check_workflow(target, settings, _seen=seen)  # a helper coroutine the workflow awaits
        if problem is not None:
            raise EffectNotAllowedError(
                f"{where} (line {line}) cannot run on Inngest: {problem}. Nothing was started"
            )
