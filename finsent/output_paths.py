"""Checks of the files and folders a command will write, made before its work: a bad path found only
after minutes of evaluation or a whole backtest lost that work and printed a traceback."""

from __future__ import annotations

import os
from pathlib import Path


def output_file_problem(path: Path, option: str) -> str | None:
    """Why `path` cannot be written as a file (a folder, no such parent folder, not writable), or None."""
    if path.is_dir():
        return f"{option} {path}: is a folder, not a file"
    parent = path.parent
    if not parent.is_dir():
        return f"{option} {path}: there is no folder {parent}"
    if not os.access(parent, os.W_OK):
        return f"{option} {path}: cannot write in {parent}"
    return None


def output_folder_problem(path: Path, option: str) -> str | None:
    """Why `path` cannot be (made and) written as a folder, or None. Missing folders on the way are
    made at write time, as `mkdir -p` would; the deepest existing one must be a writable folder."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{option} {path}: {existing} exists and is not a folder"
    if not os.access(existing, os.W_OK):
        return f"{option} {path}: cannot write in {existing}"
    return None
