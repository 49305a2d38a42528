"""Artifact URIs that may be local folders or remote (gs://, s3://, ...) through TensorFlow's file systems.

Locally the pipeline works on artifact folders directly. On a cluster (Kubeflow /
Vertex AI) artifact URIs are object-store URLs: geolabel's library writes to a local
temporary folder and the results are copied up with `tf.io.gfile`.
"""

from __future__ import annotations

import os
from pathlib import Path


def is_remote(uri: str | os.PathLike) -> bool:
    """True for a URL-style URI (gs://, s3://, ram://, ...), False for a local path."""
    return "://" in os.fspath(uri)


def upload_dir(local: str | os.PathLike, uri: str, skip: tuple[str, ...] = ()) -> None:
    """Copy the files under `local` to `uri` (same relative layout), leaving out relative paths under `skip`."""
    import tensorflow as tf

    root = Path(local)
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if not path.is_file() or any(rel.as_posix() == s or rel.as_posix().startswith(s + "/") for s in skip):
            continue
        target = f"{uri.rstrip('/')}/{rel.as_posix()}"
        tf.io.gfile.makedirs(target.rsplit("/", 1)[0])
        tf.io.gfile.copy(str(path), target, overwrite=True)


def download_file(uri: str, local: str | os.PathLike) -> Path:
    """Copy one file from `uri` to the local path `local`."""
    import tensorflow as tf

    Path(local).parent.mkdir(parents=True, exist_ok=True)
    tf.io.gfile.copy(uri, os.fspath(local), overwrite=True)
    return Path(local)


def join(uri: str | os.PathLike, *parts: str) -> str:
    """`uri/part/...` for local paths and URLs alike."""
    return "/".join([os.fspath(uri).rstrip("/"), *parts])


def local_copies(patterns: list[str], folder: str | os.PathLike) -> list[str]:
    """Local folders holding the files matched by each remote glob pattern (downloaded into `folder`)."""
    import tensorflow as tf

    folders = []
    for i, pattern in enumerate(patterns):
        target = Path(folder) / f"{i:03d}"
        for uri in sorted(tf.io.gfile.glob(pattern)):
            download_file(uri, target / uri.rsplit("/", 1)[-1])
        folders.append(str(target))
    return folders
