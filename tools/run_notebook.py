"""Execute a notebook in place (outputs kept): python tools/run_notebook.py notebooks/X.ipynb"""
import sys

import nbformat
from nbclient import NotebookClient

for path in sys.argv[1:]:
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=900, kernel_name="python3").execute()
    nbformat.write(nb, path)
    print("executed", path)
