"""The documentation check that `mkdocs build --strict` cannot make (run by .ci/run).

Every public name of `invertible` (and of its subpackages `invertible.layers` and
`invertible.grad`) is documented: it appears in a `::: invertible.Name` directive
under docs/, or its module is rendered whole (`::: invertible.grad`).

The Python examples of README.md and of every page under docs/ are run by the test
suite (tests/test_docs.py), not here.

Run from the repository root: `python scripts/check_docs.py`.
"""

import pathlib
import re
import sys
import types

import invertible

ROOT = pathlib.Path(__file__).resolve().parent.parent
DIRECTIVE = re.compile(r"^:::\s+([\w.]+)", re.MULTILINE)


def public_names(module: types.ModuleType) -> list[str]:
    names = getattr(module, "__all__", None)
    if names is None:
        names = [name for name in vars(module) if not name.startswith("_")]
    # Names imported from elsewhere (`Array`, `jax`...) are not ours to document.
    return sorted(
        name
        for name in names
        if not isinstance(getattr(module, name), types.ModuleType)
        and getattr(getattr(module, name), "__module__", "").startswith("invertible")
    )


def check_api_documented() -> list[str]:
    directives = set()
    for page in sorted((ROOT / "docs").rglob("*.md")):
        directives.update(DIRECTIVE.findall(page.read_text()))
    errors = {}  # one per object, though it may be exported by two modules
    modules = [invertible] + [
        value
        for value in vars(invertible).values()
        if isinstance(value, types.ModuleType)
        and value.__name__.startswith("invertible.")
        and not value.__name__.rpartition(".")[2].startswith("_")
    ]
    for module in modules:
        if module.__name__ in directives:
            continue  # rendered whole, members included
        for name in public_names(module):
            obj = getattr(module, name)
            # A name re-exported at the top level is documented once, there.
            paths = {f"{module.__name__}.{name}"}
            if getattr(invertible, name, None) is obj:
                paths.add(f"invertible.{name}")
            if not paths & directives:
                path = min(paths, key=len)
                errors.setdefault(
                    id(obj),
                    f"{path} is public but not in the API reference: add "
                    f"`::: {path}` to a page under docs/api/.",
                )
    return list(errors.values())


def main() -> int:
    errors = check_api_documented()
    for error in errors:
        print("error:", error, file=sys.stderr)
    if not errors:
        print("every public name is documented")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
