"""The documentation cannot rot: every ```python block of README.md and of the pages
under docs/ runs here.

The blocks of one page run in order in one namespace, like the cells of a notebook,
so a page may build on its earlier blocks. Each page is one test. Blocks that must
not run are written in another language (```bash, ```text).

The pages run with JAX's default dtypes, as a reader would run them: the suite's
conftest turns float64 on, and it is turned off again here.
"""

import pathlib
import re

import jax
import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]

# An opening fence ```python (with optional attributes, e.g. hl_lines="3"), at any
# indentation (inside a list or an admonition), up to the closing fence at the same
# indentation.
BLOCK = re.compile(
    r"^(?P<indent>[ \t]*)```python\b[^\n]*\n(?P<code>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)


def python_blocks(text: str) -> list[tuple[int, str]]:
    """`(line, code)` for every python block: `line` is where its code starts."""
    blocks = []
    for match in BLOCK.finditer(text):
        indent = match["indent"]
        lines = match["code"].splitlines(keepends=True)
        code = "".join(line.removeprefix(indent) for line in lines)
        blocks.append((text.count("\n", 0, match.start("code")), code))
    return blocks


def page_id(page: pathlib.Path) -> str:
    return str(page.relative_to(ROOT))


# Pages without examples (the API reference's `:::` pages) have nothing to run.
EXAMPLE_PAGES = [page for page in PAGES if python_blocks(page.read_text())]


def test_blocks_are_found():
    text = (
        "a\n```python\nx = 1\n```\n\n"  # a block
        '- item\n\n    ```python hl_lines="1"\n    y = x\n    ```\n'  # indented
        "```bash\nls\n```\n"  # not python
    )
    assert python_blocks(text) == [(2, "x = 1\n"), (8, "y = x\n")]


def test_pages_are_found():
    assert ROOT / "README.md" in EXAMPLE_PAGES
    assert ROOT / "docs" / "getting-started.md" in EXAMPLE_PAGES


@pytest.mark.end_to_end
@pytest.mark.parametrize("page", EXAMPLE_PAGES, ids=page_id)
def test_page_runs(page: pathlib.Path):
    blocks = python_blocks(page.read_text())
    namespace = {"__name__": "__docs__"}
    with jax.enable_x64(False):
        for line, code in blocks:
            # Pad with blank lines so that a traceback names the page and the line
            # of the Markdown file.
            exec(compile("\n" * line + code, str(page), "exec"), namespace)
