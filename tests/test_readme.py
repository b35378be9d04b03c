"""The README's Python blocks run verbatim on a fresh install (in a scratch working folder)."""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_an_api_tour():
    assert BLOCKS, "README.md lost its Python API tour"


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_python_block_runs(index, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks that write (e.g. runs/...) write here
    exec(compile(BLOCKS[index], f"README.md python block {index + 1}", "exec"), {})
