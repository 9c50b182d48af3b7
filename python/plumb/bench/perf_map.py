"""Profiling numba kernels with Linux ``perf``: symbol maps for the JIT-compiled code.

``perf`` attributes samples in JIT code through ``/tmp/perf-<pid>.map`` (one line per
function: start address and size in hex, then the name). numba keeps each compiled entry
point's LLVM module, which holds every kernel it calls (linked in), so the map names all of
them. Kernels loaded from numba's on-disk cache carry only object code and no module: profile
in a process whose ``NUMBA_CACHE_DIR`` is an empty directory (``benchmarks/profile_kernels.py``
does so), so that everything is compiled there.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Iterable, List, Optional, Tuple

# A symbol's size is the distance to the next one; the last gets this many bytes.
_LAST_SIZE = 4096
# numba's mangled names: _ZN<len><part>...<len><function>B<n>v<n>B<hash>E<argument types>.
_MANGLED = re.compile(r"^_ZN((?:\d+[A-Za-z_][A-Za-z0-9_]*?)+)B\d+v\d+B")
_PART = re.compile(r"(\d+)")


def readable_name(mangled: str) -> str:
    """``plumb.solver.pack._lpt_scan`` for numba's mangled symbol of that function; other
    names unchanged."""
    match = _MANGLED.match(mangled)
    if match is None:
        return mangled
    encoded = match.group(1)
    parts = []
    position = 0
    while position < len(encoded):
        length = _PART.match(encoded, position)
        if length is None:
            return mangled
        start = length.end()
        size = int(length.group(1))
        parts.append(encoded[start:start + size])
        position = start + size
    return ".".join(parts)


def compiled_symbols(dispatchers: Iterable[object]) -> List[Tuple[int, str]]:
    """(address, readable name) of every function compiled under the given numba dispatchers
    (their entry points and all kernels linked into them), sorted by address.

    Raises:
        RuntimeError: a dispatcher has no compiled code, or its code came from numba's cache
            (no LLVM module to name the functions).
    """
    symbols = {}
    for dispatcher in dispatchers:
        overloads = list(getattr(dispatcher, "overloads", {}).values())
        if not overloads:
            raise RuntimeError(f"{dispatcher!r} has no compiled code: call it first")
        for result in overloads:
            library = result.library
            module = getattr(library, "_final_module", None)
            if module is None:
                raise RuntimeError(
                    f"{dispatcher!r} was loaded from numba's cache, which keeps no function "
                    "names: set NUMBA_CACHE_DIR to an empty directory before importing plumb")
            for function in module.functions:
                if function.is_declaration:
                    continue
                address = library.get_pointer_to_function(function.name)
                if address:
                    symbols[address] = readable_name(function.name)
    return sorted(symbols.items())


def write_perf_map(dispatchers: Iterable[object], pid: Optional[int] = None) -> Path:
    """Writes ``/tmp/perf-<pid>.map`` (this process by default) for the dispatchers'
    compiled code (:func:`compiled_symbols`); returns its path."""
    symbols = compiled_symbols(dispatchers)
    lines = []
    for index, (address, name) in enumerate(symbols):
        end = symbols[index + 1][0] if index + 1 < len(symbols) else address + _LAST_SIZE
        lines.append(f"{address:x} {end - address:x} {name}\n")
    path = Path(f"/tmp/perf-{os.getpid() if pid is None else pid}.map")
    path.write_text("".join(lines))
    return path
