"""The shared tail of the notebook generators (tools/make_notebook_*.py): fill the markdown
placeholders and write the notebook, keeping an executed notebook's outputs when its code
cells are unchanged (edits of the text alone need no re-execution)."""

import re
from pathlib import Path

import nbformat as nbf

KERNELSPEC = {"name": "python3", "display_name": "Python 3", "language": "python"}


def write_notebook(path: Path, cells: list, text: dict) -> None:
    """Write ``cells`` to ``path``; each markdown placeholder (a key of ``text``) is replaced
    by its text."""
    for cell in cells:
        if cell.cell_type == "markdown":
            for key, value in text.items():
                if value:     # whole words only: CURVATURE must not match inside CNN_CURVATURE
                    cell.source = re.sub(rf"\b{re.escape(key)}\b", lambda _: value, cell.source)
    nb = nbf.v4.new_notebook(cells=cells, metadata={"kernelspec": KERNELSPEC})
    if path.exists():
        old = nbf.read(path, as_version=4)
        old_code = [c for c in old.cells if c.cell_type == "code"]
        new_code = [c for c in nb.cells if c.cell_type == "code"]
        if [c.source for c in old_code] == [c.source for c in new_code]:
            for o, n in zip(old_code, new_code):
                n.outputs, n.execution_count = o.outputs, o.execution_count
            print("kept the executed outputs (code unchanged)")
        else:
            print("code changed: outputs dropped, execute the notebook again")
    nbf.write(nb, path)
