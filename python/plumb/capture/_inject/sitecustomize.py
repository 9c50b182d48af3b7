"""Put first on PYTHONPATH by ``plumb run``: start plumb capture in this Python process.

The sitecustomize this file shadows (a distribution's or the user's, found further along
sys.path) still runs, first and under its own name, exactly as it would without plumb.
Nothing else happens until the program imports torch: then ``plumb.capture.launcher``
is imported and bootstrapped, so processes that never use torch never load plumb.
"""

import importlib.abc
import importlib.machinery
import importlib.util
import os
import sys


def _run_shadowed_sitecustomize():
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [entry for entry in sys.path if os.path.abspath(entry or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


def _start_capture(_torch=None):
    try:
        from plumb.capture.launcher import bootstrap

        bootstrap()
    except Exception as err:  # capture must never stop the program
        print(f"plumb run: capture disabled: {err!r}", file=sys.stderr, flush=True)


class _AfterTorch(importlib.abc.Loader):
    """torch's own loader, plus ``_start_capture`` once torch has finished executing."""

    def __init__(self, loader):
        self._loader = loader

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        # Give torch its real loader back: only this one import is intercepted.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        _start_capture(module)


class _TorchWatcher(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        if fullname != "torch":
            return None
        sys.meta_path.remove(self)  # one shot; also keeps the lookup below from recursing
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            spec.loader = _AfterTorch(spec.loader)
        return spec


try:
    _run_shadowed_sitecustomize()
finally:
    if os.environ.get("PLUMB_RUN_OUT"):
        if "torch" in sys.modules:
            _start_capture()
        else:
            sys.meta_path.insert(0, _TorchWatcher())
