"""Checks of the files and folders a command will write, made before its work: a bad path found only
after minutes of evaluation or a whole backtest lost that work and printed a traceback."""

from __future__ import annotations

import os
from pathlib import Path


def output_file_problem(path: Path, option: str) -> str | None:
    """Why `path` cannot be written as a file (a folder, no such parent folder, not writable), or None."""
    if path.is_dir():
        return f"{option} {path}: is a folder, not a file"
    if not path.parent.is_dir():
        return f"{option} {path}: there is no folder {path.parent}"
    return _not_writable(path, option, path.parent)


def output_folder_problem(path: Path, option: str) -> str | None:
    """Why `path` cannot be (made and) written as a folder, or None. Missing folders on the way are
    made at write time, as `mkdir -p` would; the deepest existing one must be a writable folder."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{option} {path}: {existing} exists and is not a folder"
    return _not_writable(path, option, existing)


def _not_writable(path: Path, option: str, folder: Path) -> str | None:
    return None if os.access(folder, os.W_OK) else f"{option} {path}: cannot write in {folder}"
