"""Output directories of `finsent train` and `finsent export`: checked before the work (an earlier
output of the same kind may be replaced, nothing else), then built beside their place and renamed in
when complete, so that a failed or killed run leaves the previous one as it was."""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

log = logging.getLogger(__name__)

OutputKind = Literal["checkpoint", "model"]
_MARKERS: dict[str, tuple[str, ...]] = {
    "checkpoint": ("train_meta.json",),
    "model": ("finsent_config.json", "model_card.json"),
}
_KIND_NAMES = {
    "checkpoint": "a `finsent train` checkpoint (train_meta.json)",
    "model": "a finsent model directory (finsent_config.json and model_card.json)",
}


def is_output_of(path: Path, kind: OutputKind) -> bool:
    """Whether `path` is a directory `finsent train` ("checkpoint") or `finsent export` ("model") wrote,
    by the marker files each writes."""
    return path.is_dir() and all((path / name).is_file() for name in _MARKERS[kind])


def output_dir_problem(out: Path, option: str, kind: OutputKind) -> str | None:
    """Why `out` cannot be (re)written as a `kind` directory, or None. The write replaces the whole
    directory, so one holding anything but an earlier output of the same kind is refused (it once deleted
    whatever `--out` named); a file, or a place that cannot be written, is found now, not after the work.
    The parent is made here (the staged directory is built in it) and a probe directory written in it."""
    try:
        here, cwd = out.resolve(), Path.cwd().resolve()
        if here == cwd or here in cwd.parents or not here.name:
            return f"{option} {out}: is the current directory or holds it; give a directory of its own"
        if os.path.ismount(here):
            return (
                f"{option} {out}: is a mount point, which cannot be replaced by a rename; give a directory "
                "inside it"
            )
        if out.is_symlink() or out.exists():
            if not out.is_dir():
                return f"{option} {out}: exists and is not a directory; give a new or empty directory"
            if any(out.iterdir()) and not is_output_of(out, kind):
                return (
                    f"{option} {out}: holds files and is not {_KIND_NAMES[kind]}; writing there would "
                    "delete them: give a new or empty directory"
                )
        parent = out.parent
        existing = parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if not existing.is_dir():
            return f"{option} {out}: {existing} exists and is not a directory"
        parent.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=f".{out.name}.probe-", dir=parent))
    except OSError as e:
        return f"{option} {out}: cannot write there ({e.strerror or e})"
    return None


def overlap_problem(ckpt: Path, out: Path) -> str | None:
    """Why the model directory `out` cannot be written given the checkpoint `ckpt`: replacing `out`
    would delete the checkpoint, or `out` would sit inside it."""
    c, o = ckpt.resolve(), out.resolve()
    if c == o:
        return f"--out {out} is the checkpoint itself (--checkpoint {ckpt}); exporting there would delete it"
    if c.is_relative_to(o):
        return f"--out {out} holds the checkpoint (--checkpoint {ckpt}); exporting there would delete it"
    if o.is_relative_to(c):
        return f"--out {out} is inside the checkpoint (--checkpoint {ckpt}); write the model elsewhere"
    return None


LEFTOVER_AGE_S = 3600.0
"""A sibling `.<name>.tmp-*` or `.old-*` untouched this long is taken for a killed export's leftover. Not
a process id check: exports in two containers sharing the volume see neither each other's processes nor
different process ids (both may be PID 1), and one would delete the other's directory mid-build."""


def _leftovers(out: Path, kind: str) -> list[Path]:
    """Siblings `.<name>.<kind>-*` of `out` that `staged_directory` made."""
    return sorted(out.parent.glob(f".{out.name}.{kind}-*"))


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _age_s(path: Path) -> float:
    try:
        return time.time() - path.lstat().st_mtime
    except OSError:
        return 0.0


def _clear_leftovers(out: Path) -> None:
    """Clean up after an export that was killed (SIGKILL, power loss) inside `staged_directory`: a previous
    model directory renamed aside but not replaced (killed between the two renames) is put back when `out`
    is missing; half-built and renamed-aside directories older than LEFTOVER_AGE_S are removed (younger
    ones may belong to an export running now, elsewhere)."""
    for path in _leftovers(out, "old"):
        if not _exists(out):
            log.warning("putting back %s as %s (a run stopped while replacing it)", path, out)
            path.rename(out)
    for path in [*_leftovers(out, "tmp"), *_leftovers(out, "old")]:
        if _age_s(path) > LEFTOVER_AGE_S:
            log.warning("removing %s, left by a run that did not finish", path)
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def staged_directory(out: Path) -> Iterator[Path]:
    """A new empty directory beside `out` (`.<name>.tmp-<pid>-<random>`, same parent, so the same file system)
    to build into; when the block ends normally it takes the place of `out`: the old `out` is renamed
    aside (`.<name>.old-...`), the new one renamed in, the old one removed. Anything raised in the
    block (KeyboardInterrupt included) removes the temporary directory and leaves `out` as it was; so
    does a failure of the swap, which puts the old `out` back."""
    parent = out.parent
    parent.mkdir(parents=True, exist_ok=True)
    _clear_leftovers(out)
    unique = f"{os.getpid()}-{secrets.token_hex(4)}"
    stage = parent / f".{out.name}.tmp-{unique}"
    old = parent / f".{out.name}.old-{unique}"
    stage.mkdir()
    try:
        yield stage
        try:
            if _exists(out):
                out.rename(old)
            stage.rename(out)
        except BaseException:
            if _exists(old) and not _exists(out):  # stopped between the two renames
                old.rename(out)
            raise
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    if _exists(old):
        try:
            _remove(old)
        except OSError as exc:
            log.warning("could not remove the previous directory %s (%s)", old, exc)


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()
