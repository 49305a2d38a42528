"""Write mesh_reference.npz: the polygons of the original mesh polygoniser on the real masks
that tests/vectorize/test_mesh.py compares the current one with.

The original is the sequential implementation on a Delaunay triangle mesh (half-edge
collapses one at a time from a heap, edge flips), taken from git at REFERENCE_COMMIT.

Run from the repository root: .venv/bin/python tests/vectorize/data/make_mesh_reference.py
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
REFERENCE_COMMIT = "52b0dc4"  # last commit of the triangle-mesh implementation of geolabel/vectorize/mesh.py

sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(ROOT))

from test_mesh import MESH_CASES, SHARED, pack_frame  # noqa: E402


def original_module():
    source = subprocess.run(["git", "show", f"{REFERENCE_COMMIT}:geolabel/vectorize/mesh.py"], cwd=ROOT,
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "mesh_original.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("mesh_original", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["mesh_original"] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    import numpy as np

    original = original_module()
    arrays = {}
    for name, load in MESH_CASES.items():
        mask, transform, crs = load(SHARED)
        frame = original.mesh_polygons(mask, transform, crs)
        arrays.update({f"{name}_{key}": value for key, value in pack_frame(frame).items()})
        print(name, len(frame), "polygons", flush=True)
    np.savez_compressed(HERE / "mesh_reference.npz", commit=np.array(REFERENCE_COMMIT), **arrays)


if __name__ == "__main__":
    main()
