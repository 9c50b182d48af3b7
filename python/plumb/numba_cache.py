"""Keeps numba's on-disk cache of plumb's kernels in step with plumb's sources.

numba validates a cached function against its own source file only, but the machine code it
caches has every kernel the function calls compiled in, from whichever files they live in
(``plumb.solver.model.solve_layers`` holds the packing kernels of ``pack.py``, ``refine.py``
and the rest). A change to ``pack.py`` alone (a ``git pull``, an editable install, an upgrade
that leaves ``model.py`` byte-identical) would leave ``solve_layers`` running the old packing
from its cache, silently. :func:`drop_stale_caches` runs when ``plumb`` is imported, before any
kernel is loaded: it hashes the package's sources and, in every place numba may keep the
cache of a plumb module, deletes the cached kernels written for other sources.

Not covered: a process that imported plumb before its sources changed and compiles a kernel
afterwards writes it (old code) into a directory already stamped for the new sources. Restart
long-running processes after an upgrade, as for any Python package.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, List, Tuple

from numba.core import config

# Written into each cache directory: the stat fingerprint and the content digest of the
# sources its cached kernels were compiled from.
STAMP_NAME = "plumb-sources.sha256"
# What numba writes per cached function: an index and its compiled data.
_CACHE_SUFFIXES = (".nbi", ".nbc")
# A source modified this recently (seconds) may be modified again within the file system's
# timestamp granularity without its stat changing, so its fingerprint is not trusted (the
# "racy git" problem): the next import hashes the contents instead.
_RACY_WINDOW_S = 2.0
# The stamp's fingerprint field for an untrusted (empty) fingerprint: no fingerprint equals it.
_UNTRUSTED = "-"

# (path relative to the package, absolute path) of one source file.
Source = Tuple[str, str]


def package_sources(package_dir: Path) -> List[Source]:
    """Every ``.py`` file under ``package_dir`` (``__pycache__`` skipped), in path order."""
    sources = []
    top = str(package_dir)
    for root, dirs, names in os.walk(top):
        dirs[:] = sorted(name for name in dirs if name != "__pycache__")
        # String paths: pathlib would cost more than the rest of the check together.
        prefix = root[len(top) + 1:].replace(os.sep, "/")
        for name in sorted(names):
            if name.endswith(".py"):
                relative = f"{prefix}/{name}" if prefix else name
                sources.append((relative, os.path.join(root, name)))
    return sources


def sources_digest(package_dir: Path) -> str:
    """sha256 (hex) over the relative paths and contents of every ``.py`` file under
    ``package_dir``, in path order: any edit, addition or removal changes it."""
    return _content_digest(package_sources(Path(package_dir)))


def _content_digest(sources: List[Source]) -> str:
    digest = hashlib.sha256()
    for relative, path in sources:
        with open(path, "rb") as source:
            digest.update(relative.encode() + b"\0" + source.read() + b"\0")
    return digest.hexdigest()


def _stat_fingerprint(sources: List[Source]) -> str:
    """sha256 (hex) over path, size and mtime (ns) of every source: a tenth of the cost of
    reading them. Empty when a source changed within ``_RACY_WINDOW_S``."""
    digest = hashlib.sha256()
    newest = 0
    for relative, path in sources:
        status = os.stat(path)
        newest = max(newest, status.st_mtime_ns)
        digest.update(f"{relative}\0{status.st_size}\0{status.st_mtime_ns}\0".encode())
    if newest >= time.time_ns() - int(_RACY_WINDOW_S * 1e9):
        return ""
    return digest.hexdigest()


def cache_dirs(source_dir: Path) -> List[Path]:
    """The directories numba may cache the functions of ``source_dir``'s modules in, as its
    cache locators choose them: ``NUMBA_CACHE_DIR`` when set, the ``__pycache__`` beside
    the sources, the user-wide numba cache (ordered as numba tries them).

    Raises ImportError / AttributeError if numba's cache locator (private API) moved."""
    return _cache_dirs(Path(source_dir), *_numba_locator())


def _numba_locator() -> Tuple[Callable[[str], str], Path]:
    """numba's own helpers for where it caches a module (numba offers no public way to ask):
    the function naming a module's cache subdirectory, and the user-wide cache root.
    Raises ImportError / AttributeError if a numba release moved them."""
    from numba.core.caching import _CacheLocator
    from numba.misc.appdirs import AppDirs

    return (_CacheLocator.get_suitable_cache_subpath,
            Path(AppDirs(appname="numba", appauthor=False).user_cache_dir))


def _cache_dirs(source_dir: Path, subpath_of: Callable[[str], str],
                user_root: Path) -> List[Path]:
    """:func:`cache_dirs` with numba's locator helpers (:func:`_numba_locator`) given."""
    subpath = subpath_of(str(source_dir / "__init__.py"))
    dirs = []
    if config.CACHE_DIR:
        dirs.append(Path(config.CACHE_DIR) / subpath)
    dirs.append(source_dir / "__pycache__")
    dirs.append(user_root / subpath)
    return dirs


def drop_stale_caches(package_dir: Path) -> int:
    """Deletes the cached numba functions of ``package_dir``'s modules that were not compiled
    from its current sources (a cache directory without a stamp counts as stale) and stamps
    each cache directory it can write with the current sources. Returns how many cache files
    it deleted.

    Sources are compared by content (:func:`sources_digest`), but a cache directory whose
    stamp matches every source's size and mtime is taken as current without reading them:
    about 3 ms per import for plumb's 0.8 MB of sources against 5-13 ms to hash them. A stale
    cache costs a first-ever compile afterwards. Errors (a read-only or vanished directory, a
    file another process removed first) are skipped: numba recompiles what it cannot load.
    """
    package_dir = Path(package_dir)
    try:
        locator = _numba_locator()
    except (ImportError, AttributeError) as err:
        # A numba release that moved its cache locator must not break ``import plumb``.
        warnings.warn(f"plumb cannot locate numba's cache with this numba ({err}): cached "
                      "kernels are not checked against plumb's sources; after changing "
                      "them, delete the *.nbi / *.nbc files of numba's cache",
                      RuntimeWarning, stacklevel=2)
        return 0
    sources = package_sources(package_dir)
    fingerprint = _stat_fingerprint(sources)
    content = None
    deleted = 0
    source_dirs = sorted({os.path.dirname(path) for _, path in sources})
    for source_dir in source_dirs:
        for cache_dir in _cache_dirs(Path(source_dir), *locator):
            if not cache_dir.is_dir():
                continue
            stamped_fingerprint, stamped_content = _read_stamp(cache_dir)
            if fingerprint and stamped_fingerprint == fingerprint:
                continue
            if content is None:
                content = _content_digest(sources)
            if stamped_content != content:
                deleted += _delete_cached(cache_dir)
            # Within the racy window every import gets here: rewrite only a stamp that differs.
            if (stamped_fingerprint, stamped_content) != (fingerprint or _UNTRUSTED, content):
                _write_stamp(cache_dir, fingerprint, content)
    return deleted


def _read_stamp(cache_dir: Path) -> Tuple[str, str]:
    """(stat fingerprint, content digest) of a stamp; empty strings where there is none."""
    try:
        fields = (cache_dir / STAMP_NAME).read_text().split()
    except OSError:
        return "", ""
    if len(fields) != 2:
        return "", ""
    return fields[0], fields[1]


def _delete_cached(cache_dir: Path) -> int:
    deleted = 0
    for path in cache_dir.iterdir():
        if path.suffix in _CACHE_SUFFIXES:
            try:
                path.unlink()
                deleted += 1
            except OSError:
                pass
    return deleted


def _write_stamp(cache_dir: Path, fingerprint: str, content: str) -> None:
    """Writes the stamp through a temporary file and a rename, so that a process reading it
    concurrently sees the old stamp or the new one, never a partial one. An untrusted
    (empty) fingerprint is written as ``_UNTRUSTED``."""
    try:
        handle, temporary = tempfile.mkstemp(dir=cache_dir, prefix=STAMP_NAME)
    except OSError:
        return
    try:
        with os.fdopen(handle, "w") as stamp:
            stamp.write(f"{fingerprint or _UNTRUSTED} {content}\n")
        os.replace(temporary, cache_dir / STAMP_NAME)
    except OSError:
        # Leave no temporary file behind in numba's cache directory.
        try:
            os.unlink(temporary)
        except OSError:
            pass


def is_cached(source_dir: Path, function: str) -> bool:
    """Whether numba holds a cached compilation of ``function`` (``"module.qualname"`` of a
    module in ``source_dir``, e.g. ``"model.solve_layers"``) in any of its cache directories:
    False means the next call compiles it (and everything it calls) first. Raises as
    :func:`cache_dirs` does."""
    for cache_dir in cache_dirs(Path(source_dir)):
        if cache_dir.is_dir() and any(cache_dir.glob(f"{function}-*.nbi")):
            return True
    return False
