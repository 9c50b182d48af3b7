"""plumb.numba_cache: cached kernels compiled from other sources are dropped before use."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from plumb import numba_cache
from plumb.numba_cache import (STAMP_NAME, cache_dirs, drop_stale_caches, is_cached,
                               sources_digest)


def _package(root: Path, value: int) -> Path:
    """A package whose ``a.caller`` (cached) calls ``b.value`` (cached) from another file, as
    plumb's whole-model kernels call the packing kernels; its import runs the guard unless
    PLUMB_TEST_NO_GUARD is set, and records how many cache files it deleted."""
    package = root / "guarded"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text(textwrap.dedent("""
        import os
        from pathlib import Path

        DROPPED = -1
        if not os.environ.get("PLUMB_TEST_NO_GUARD"):
            from plumb.numba_cache import drop_stale_caches

            DROPPED = drop_stale_caches(Path(__file__).parent)
        """))
    (package / "a.py").write_text(textwrap.dedent("""
        from numba import njit

        from .b import value


        @njit(cache=True)
        def caller():
            return value() * 10
        """))
    (package / "b.py").write_text(textwrap.dedent(f"""
        from numba import njit


        @njit(cache=True)
        def value():
            return {value}
        """))
    return package


def _run(root: Path, guard: bool) -> tuple:
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_CACHE_DIR"}
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    if not guard:
        env["PLUMB_TEST_NO_GUARD"] = "1"
    out = subprocess.run([sys.executable, "-c", "import guarded, guarded.a; "
                          "print(guarded.a.caller(), guarded.DROPPED)"],
                         cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    result, dropped = out.stdout.split()
    return int(result), int(dropped)


def test_a_changed_callee_is_not_run_from_a_stale_cache(tmp_path):
    _package(tmp_path, 1)
    assert _run(tmp_path, guard=False) == (10, -1)
    # numba alone checks a.py, unchanged, and runs the cached caller with the old callee
    # compiled in: the hazard the guard exists for (this run shows the cache is used at all).
    _package(tmp_path, 2)
    assert _run(tmp_path, guard=False) == (10, -1)
    result, dropped = _run(tmp_path, guard=True)
    assert result == 20 and dropped > 0
    # Same sources: the cache stays and is used.
    assert _run(tmp_path, guard=True) == (20, 0)
    _package(tmp_path, 3)
    result, dropped = _run(tmp_path, guard=True)
    assert result == 30 and dropped > 0


def _fake_tree(root: Path) -> Path:
    """Sources in two directories, each with cached-kernel files and a .pyc beside them."""
    package = root / "pkg"
    for directory in (package, package / "sub"):
        (directory / "__pycache__").mkdir(parents=True)
        (directory / "mod.py").write_text("X = 1\n")
    for directory in (package / "__pycache__", package / "sub" / "__pycache__"):
        for name in ("mod.kernel-3.py311.nbi", "mod.kernel-3.py311.1.nbc", "mod.cpython-311.pyc"):
            (directory / name).write_bytes(b"x")
    return package


def _cached(directory: Path) -> list:
    return sorted(p.name for p in directory.iterdir() if p.suffix in (".nbi", ".nbc"))


def test_unstamped_caches_are_dropped_and_stamped(tmp_path):
    package = _fake_tree(tmp_path)
    assert drop_stale_caches(package) == 4
    for directory in (package / "__pycache__", package / "sub" / "__pycache__"):
        assert _cached(directory) == []
        assert (directory / "mod.cpython-311.pyc").exists()
        assert (directory / STAMP_NAME).read_text().split()[1] == sources_digest(package)


def test_caches_stay_until_a_source_changes(tmp_path):
    package = _fake_tree(tmp_path)
    drop_stale_caches(package)
    cache = package / "sub" / "__pycache__"
    (cache / "mod.kernel-3.py311.nbi").write_bytes(b"x")
    assert drop_stale_caches(package) == 0
    assert _cached(cache) == ["mod.kernel-3.py311.nbi"]
    # A change in the other directory drops this one's kernels too.
    (package / "mod.py").write_text("X = 2\n")
    assert drop_stale_caches(package) == 1
    assert _cached(cache) == []


def _age(package: Path, seconds: float) -> None:
    """Sets every source's mtime ``seconds`` in the past (out of the racy window)."""
    when = time.time() - seconds
    for path in package.rglob("*.py"):
        os.utime(path, (when, when))


def test_unchanged_stat_skips_reading_the_sources(tmp_path, monkeypatch):
    package = _fake_tree(tmp_path)
    _age(package, 60)
    drop_stale_caches(package)

    def unread(sources):
        raise AssertionError("sources were read although their stat matched the stamp")

    monkeypatch.setattr(numba_cache, "_content_digest", unread)
    cache = package / "__pycache__"
    (cache / "mod.kernel-3.py311.nbi").write_bytes(b"x")
    assert drop_stale_caches(package) == 0
    assert _cached(cache) == ["mod.kernel-3.py311.nbi"]


def test_a_touched_but_unchanged_source_keeps_the_caches(tmp_path):
    package = _fake_tree(tmp_path)
    _age(package, 60)
    drop_stale_caches(package)
    cache = package / "sub" / "__pycache__"
    (cache / "mod.kernel-3.py311.nbi").write_bytes(b"x")
    _age(package, 30)
    assert drop_stale_caches(package) == 0
    assert _cached(cache) == ["mod.kernel-3.py311.nbi"]
    fingerprint = (cache / STAMP_NAME).read_text().split()[0]
    assert fingerprint == numba_cache._stat_fingerprint(numba_cache.package_sources(package))


def test_a_fresh_edit_of_the_same_size_is_seen(tmp_path):
    """Within the racy window the stat is not trusted: an edit that keeps size and (coarse)
    mtime still drops the caches."""
    package = _fake_tree(tmp_path)
    drop_stale_caches(package)
    cache = package / "__pycache__"
    assert (cache / STAMP_NAME).read_text().split()[0] == "-"
    (cache / "mod.kernel-3.py311.nbi").write_bytes(b"x")
    stat = os.stat(package / "mod.py")
    (package / "mod.py").write_text("X = 9\n")
    os.utime(package / "mod.py", ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert drop_stale_caches(package) == 1


def test_a_current_stamp_is_not_rewritten_within_the_racy_window(tmp_path):
    """Fresh sources are hashed on every import, but a stamp that already says the same is
    left as it is (no write per cache directory per import)."""
    package = _fake_tree(tmp_path)
    drop_stale_caches(package)
    stamp = package / "__pycache__" / STAMP_NAME
    assert stamp.read_text().split()[0] == "-"
    inode = os.stat(stamp).st_ino
    assert drop_stale_caches(package) == 0
    assert os.stat(stamp).st_ino == inode


@pytest.mark.parametrize("change", ["edit", "add", "remove"])
def test_digest_follows_every_source(tmp_path, change):
    package = _fake_tree(tmp_path)
    before = sources_digest(package)
    if change == "edit":
        (package / "sub" / "mod.py").write_text("X = 3\n")
    elif change == "add":
        (package / "sub" / "other.py").write_text("")
    else:
        (package / "sub" / "mod.py").unlink()
    assert sources_digest(package) != before


def test_numba_cache_dir_is_searched(tmp_path, monkeypatch):
    package = _fake_tree(tmp_path / "src")
    user_dir = tmp_path / "numba-cache"
    monkeypatch.setattr(numba_cache.config, "CACHE_DIR", str(user_dir))
    located = cache_dirs(package / "sub")[0]
    assert located.parent == user_dir
    located.mkdir(parents=True)
    (located / "mod.kernel-3.py311.nbi").write_bytes(b"x")
    assert drop_stale_caches(package) == 5
    assert _cached(located) == []
    assert (located / STAMP_NAME).exists()


def test_is_cached_sees_the_cache_files(tmp_path):
    package = _fake_tree(tmp_path)
    assert is_cached(package, "mod.kernel")
    assert not is_cached(package, "mod.other")
    drop_stale_caches(package)
    assert not is_cached(package, "mod.kernel")


def test_the_solver_entry_point_is_found_in_numba_s_real_cache():
    """The name the CLI's compile notice looks for is the one numba writes."""
    import numpy as np

    import plumb

    plumb.solve(np.arange(1.0, 17.0), 4, num_redundant=4)
    assert is_cached(Path(plumb.__file__).parent / "solver", "model.solve_layers")


@pytest.mark.parametrize("cached", [False, True])
def test_cli_announces_a_compile_only_when_the_cache_is_cold(monkeypatch, capsys, cached):
    from plumb.cli import main

    monkeypatch.setattr(numba_cache, "is_cached", lambda source_dir, function: cached)
    assert main(["solve", "example", "--ranks", "8"]) == 0
    err = capsys.readouterr().err
    assert ("compiling the solver's kernels" in err) is not cached


def test_a_numba_without_the_cache_locator_only_warns(tmp_path, monkeypatch):
    """numba's cache locator is private API: if a release moves it, import plumb still works."""
    import numba.core.caching

    package = _fake_tree(tmp_path)
    monkeypatch.delattr(numba.core.caching, "_CacheLocator")
    with pytest.warns(RuntimeWarning, match="cannot locate numba's cache"):
        assert drop_stale_caches(package) == 0
    assert _cached(package / "__pycache__") == ["mod.kernel-3.py311.1.nbc",
                                                "mod.kernel-3.py311.nbi"]


def test_cli_runs_without_the_cache_locator(monkeypatch, capsys):
    import numba.core.caching

    from plumb.cli import main

    monkeypatch.delattr(numba.core.caching, "_CacheLocator")
    assert main(["solve", "example", "--ranks", "8"]) == 0
    assert "compiling" not in capsys.readouterr().err
