"""The fingerprint of the C++/CUDA sources that fastladder._C is built from.

setup.py compiles it into _C; an import from a source checkout recomputes it to tell a stale build.
This module imports nothing but the standard library (setup.py loads it before torch is checked).
"""
import glob
import hashlib
import os

SOURCE_SUFFIXES = (".h", ".cpp", ".cu", ".cuh")


def source_hash(root):
    """sha256 (first 16 hex digits) over the paths and contents of root/csrc/**/{*.h,*.cpp,*.cu,*.cuh}."""
    digest = hashlib.sha256()
    for path in sorted(glob.glob(os.path.join(root, "csrc", "**", "*"), recursive=True)):
        if os.path.isfile(path) and path.endswith(SOURCE_SUFFIXES):
            digest.update(os.path.relpath(path, root).replace(os.sep, "/").encode())
            with open(path, "rb") as f:
                digest.update(f.read())
    return digest.hexdigest()[:16]
