"""Griffe extensions for the API reference, loaded by mkdocs.yml. They change how
the source is *shown*, never the source.

- `InheritDocstrings`: a method that overrides a documented method of a base class,
  and has no docstring of its own, shows the base's docstring. So every layer's
  `__call__`, `inverse` and `inverse_jvp` appear under the layer, with the contract
  written once, on the abstract base.
- `JaxtypingAnnotations`: griffe reads every string inside an annotation as a
  forward reference and parses it, which turns jaxtyping's shape strings into
  expressions (`Float[Array, "channels *rest"]` would show as
  `Float[Array, channels * rest]`). Signatures are rebuilt with strings kept as
  written, in double quotes (as `ruff format` writes them) whether or not the
  signature is long enough to be reformatted.
"""

import ast
import contextlib
import dataclasses
import json
from typing import Any

import griffe


def inherit_docstrings(obj: griffe.Object) -> None:
    for member in obj.members.values():
        if member.is_alias:
            continue  # re-exported or inherited: documented where it is defined
        if member.is_class or member.is_module:
            inherit_docstrings(member)
        elif obj.is_class and member.is_function and not member.docstring:
            with contextlib.suppress(Exception):  # unresolvable bases: leave as is
                for base in obj.mro():
                    found = base.members.get(member.name)
                    if found is not None and found.docstring:
                        member.docstring = griffe.Docstring(
                            found.docstring.value, parent=member
                        )
                        break


class InheritDocstrings(griffe.Extension):
    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:  # griffe 2
        inherit_docstrings(pkg)

    def on_package_loaded(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        inherit_docstrings(pkg)  # griffe 1


class JaxtypingAnnotations(griffe.Extension):
    def on_function_instance(
        self, *, node: Any, func: griffe.Function, **kwargs: Any
    ) -> None:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            return  # found by inspection, not from the source: nothing to redo

        def expression(annotation: ast.AST | None) -> Any:
            return _double_quotes(
                griffe.safe_get_expression(
                    annotation, parent=func.parent, parse_strings=False
                )
            )

        arguments = node.args
        for argument in (
            *arguments.posonlyargs,
            *arguments.args,
            *([arguments.vararg] if arguments.vararg else []),
            *arguments.kwonlyargs,
            *([arguments.kwarg] if arguments.kwarg else []),
        ):
            if argument.annotation is not None and argument.arg in func.parameters:
                func.parameters[argument.arg].annotation = expression(
                    argument.annotation
                )
        if node.returns is not None:
            func.returns = expression(node.returns)


def _double_quotes(expr: Any) -> Any:
    """Rewrite the string literals of an expression, `'a b'` to `"a b"`."""
    if isinstance(expr, str):
        if len(expr) >= 2 and expr[0] == expr[-1] == "'":
            with contextlib.suppress(ValueError, SyntaxError):
                return json.dumps(ast.literal_eval(expr), ensure_ascii=False)
        return expr
    if isinstance(expr, list):
        return [_double_quotes(item) for item in expr]
    if dataclasses.is_dataclass(expr) and not isinstance(expr, type):
        for field in dataclasses.fields(expr):
            value = getattr(expr, field.name)
            if isinstance(value, str | list) or dataclasses.is_dataclass(value):
                with contextlib.suppress(
                    AttributeError, dataclasses.FrozenInstanceError
                ):
                    setattr(expr, field.name, _double_quotes(value))
    return expr
