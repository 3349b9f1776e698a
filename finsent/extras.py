"""Optional extras (`pip install 'finsent[...]'`): checked before the work that needs them, not after."""

from __future__ import annotations

import importlib.util
import sys


def missing_extra(module: str, extra: str, command: str, why: str) -> bool:
    """True, after telling how to install it, when `module` of the optional `extra` is not installed."""
    if importlib.util.find_spec(module) is not None:
        return False
    print(
        f"finsent {command}: needs the {extra} extra: pip install 'finsent[{extra}]' ({why})", file=sys.stderr
    )
    return True
