"""Reading a workflow's source before a run starts: which functions it calls, found without
running it (``workflow_calls``), so an engine adapter can refuse what its engine cannot express
before anything is started: an effect it does not offer (``refuse_effects``), a step timeout or
a sleep longer than it allows (``number`` reads a constant argument), a step its workers could
not find by name (the Temporal adapter's ``check_workflow``).

Best effort, by design: the source is parsed (``inspect.getsource``), each call's target is
resolved only when it is a module-level name or a dotted attribute of a module or class
(``evaluate``; nothing is called, no property runs); a name bound inside the function (a
parameter, a local, a loop variable) depends on run-time values and is not resolved. Effects
chosen at run time are still refused by the driver's ``Planner(check=...)`` when issued.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import operator
import textwrap
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import EffectNotAllowedError
from ..workflow import _effects

__all__ = [
    "MISSING",
    "SourceCall",
    "bound_names",
    "evaluate",
    "function_scope",
    "number",
    "refuse_effect",
    "refuse_effects",
    "workflow_calls",
]

#: What ``evaluate`` answers for an expression whose object depends on run-time values.
MISSING: Any = object()


def bound_names(tree: ast.AST) -> set[str]:
    """Names assigned anywhere in a function's AST (parameters, locals, loop/comprehension
    variables, nested defs): their values are only known at run time."""
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
        elif isinstance(node, ast.ExceptHandler) and node.name:
            names.add(node.name)
    return names


def evaluate(expr: ast.expr, scope: dict[str, Any], local: set[str]) -> Any:
    """The object a Name or dotted Attribute refers to, without calling anything; MISSING if
    it depends on run-time values."""
    if isinstance(expr, ast.Name):
        if expr.id in local:
            return MISSING
        if expr.id in scope:
            return scope[expr.id]
        return getattr(builtins, expr.id, MISSING)
    if isinstance(expr, ast.Attribute):
        base = evaluate(expr.value, scope, local)
        if base is MISSING:
            return MISSING
        if inspect.ismodule(base) or isinstance(base, type):
            return getattr(base, expr.attr, MISSING)
        # An instance: only methods (no property or __getattr__ code runs here).
        raw = inspect.getattr_static(base, expr.attr, MISSING)
        if isinstance(raw, types.FunctionType | staticmethod | classmethod):
            return getattr(base, expr.attr, MISSING)
        return MISSING
    return MISSING


def function_scope(fn: Callable[..., Any]) -> dict[str, Any]:
    """The names ``fn``'s body can see: its module's globals and its closure's cells."""
    scope: dict[str, Any] = dict(getattr(fn, "__globals__", {}))
    code = getattr(fn, "__code__", None)
    closure = getattr(fn, "__closure__", None) or ()
    if code is not None:
        for name, cell in zip(code.co_freevars, closure, strict=False):
            try:
                scope[name] = cell.cell_contents
            except ValueError:  # empty cell
                pass
    return scope


_OPERATORS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Pow: operator.pow,
    ast.Mod: operator.mod,
}


def number(expr: ast.expr, scope: dict[str, Any], local: set[str]) -> float | None:
    """The value of a constant arithmetic expression (literals, module-level constants, unary
    and binary arithmetic), or None when it is only known at run time."""
    if isinstance(expr, ast.Constant):
        value = expr.value
    elif isinstance(expr, ast.Name | ast.Attribute):
        value = evaluate(expr, scope, local)
    elif isinstance(expr, ast.UnaryOp) and isinstance(expr.op, ast.USub | ast.UAdd):
        inner = number(expr.operand, scope, local)
        return None if inner is None else (-inner if isinstance(expr.op, ast.USub) else inner)
    elif isinstance(expr, ast.BinOp) and type(expr.op) in _OPERATORS:
        left, right = number(expr.left, scope, local), number(expr.right, scope, local)
        if left is None or right is None:
            return None
        try:
            return float(_OPERATORS[type(expr.op)](left, right))
        except (ArithmeticError, ValueError, OverflowError):
            return None
    else:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


@dataclass(frozen=True, slots=True)
class SourceCall:
    """One call in a workflow's source: its node, the object it calls (MISSING when that is only
    known at run time), and where it is (``where``: the function's module.qualname; ``line``: in
    its file). ``value`` and ``number`` resolve its arguments the same way."""

    node: ast.Call
    target: Any
    where: str
    line: int
    scope: dict[str, Any]
    local: set[str]

    def value(self, expr: ast.expr) -> Any:
        return evaluate(expr, self.scope, self.local)

    def number(self, expr: ast.expr) -> float | None:
        return number(expr, self.scope, self.local)


def workflow_calls(fn: Callable[..., Any]) -> Iterator[SourceCall]:
    """Every call in ``fn``'s source, then (depth first, each function once) in the module-level
    coroutine functions it calls that are not coro_durable's own: the helpers a workflow awaits.
    A function whose source cannot be read yields nothing."""
    yield from _calls(fn, set())


def _calls(fn: Callable[..., Any], seen: set[Any]) -> Iterator[SourceCall]:
    if fn in seen:
        return
    seen.add(fn)
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return
    scope = function_scope(fn)
    local = bound_names(tree.body[0]) if tree.body else set()
    if tree.body and isinstance(tree.body[0], ast.AsyncFunctionDef | ast.FunctionDef):
        local.discard(tree.body[0].name)
    where = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', '?')}"
    code = getattr(fn, "__code__", None)
    first_line = code.co_firstlineno if code is not None else 1
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        target = evaluate(node.func, scope, local)
        yield SourceCall(node, target, where, node.lineno + first_line - 1, scope, local)
        if (
            target is not MISSING
            and inspect.iscoroutinefunction(target)
            and not getattr(target, "__module__", "").startswith("coro_durable")
            and "<locals>" not in getattr(target, "__qualname__", "<locals>")
        ):
            yield from _calls(target, seen)


def refuse_effects(fn: Callable[..., Any], refused: Mapping[str, str], engine: str) -> None:
    """Raise EffectNotAllowedError, naming the effect, the engine and where, when workflow
    ``fn`` (or a helper coroutine it calls) calls one of the effect constructors ``refused``
    names (by the effect's kind, which is its constructor's name: ``{"send": "what to do
    instead"}`` refuses ``cd.send``)."""
    constructors = {id(getattr(_effects, name)): (name, hint) for name, hint in refused.items()}
    for call in workflow_calls(fn):
        if id(call.target) in constructors:
            name, hint = constructors[id(call.target)]
            raise EffectNotAllowedError(
                f"{call.where} (line {call.line}) uses cd.{name}, which {engine} does not offer "
                f"through coro_durable; {hint}. Nothing was started"
            )


def refuse_effect(effect: Any, refused: Mapping[str, str], engine: str) -> None:
    """The same refusal at the effect itself (a driver's ``Planner(check=...)``), for a use the
    source check could not see: EffectNotAllowedError when ``effect.kind`` is in ``refused``."""
    hint = refused.get(getattr(effect, "kind", ""))
    if hint is not None:
        raise EffectNotAllowedError(
            f"cd.{effect.kind} is not offered on {engine} through coro_durable; {hint}"
        )
