"""Run the ``riskstream`` command from another source tree with this virtualenv: the before half of a before/after
benchmark, measured side by side with the current code.

Usage: .venv/bin/python scripts/run_tree.py TREE riskstream-arguments...
e.g.   git archive ef31af2 | tar -x -C /tmp/base
       .venv/bin/python scripts/run_tree.py /tmp/base bench ingest --json

``PYTHONPATH=TREE riskstream ...`` does not do this: the project is installed in editable mode, and setuptools'
editable finder maps the project's packages to this checkout ahead of ``sys.path``. This script removes that finder
and puts TREE first. Worker processes that ``multiprocessing`` spawns import this file again, so they read TREE too.
The tree must need no dependency this virtualenv lacks.
"""

from __future__ import annotations

import sys
from pathlib import Path

if len(sys.argv) < 2 or not (Path(sys.argv[1]) / "riskstream" / "cli.py").is_file():
    if __name__ == "__main__":
        sys.exit(__doc__)
else:
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in getattr(f, "__module__", "")]
    sys.path.insert(0, str(Path(sys.argv[1]).resolve()))

if __name__ == "__main__":
    from riskstream.cli import run

    sys.argv = ["riskstream", *sys.argv[2:]]
    sys.exit(run())
