"""Run a console-script entry point as if some modules were not installed (tests/app/test_deps.py).

    python tests/scripts/hide_modules.py tqdm,matplotlib pgap.finetune:main ARG...
    PYTHONPATH=. python tests/scripts/hide_modules.py tqdm bench.kernels.perturb:main ARG...

Each hidden name (and its submodules) is made absent the way a missing install is: ``import``
raises ModuleNotFoundError and ``importlib.util.find_spec`` returns None (``None`` in
``sys.modules``), and a finder placed first on ``sys.meta_path`` keeps refusing it should
anything drop that entry. The entry point is called without arguments, with ``sys.argv`` set to
``[MODULE, ARG...]``, and its return value is the exit status.
"""
import importlib
import importlib.abc
import sys


class _Hidden(importlib.abc.MetaPathFinder):
    def __init__(self, names):
        self.names = frozenset(names)

    def find_spec(self, fullname, path=None, target=None):
        if fullname.partition(".")[0] in self.names:
            raise ModuleNotFoundError(f"No module named {fullname!r} (hidden)", name=fullname)
        return None


def hide(names):
    for name in names:
        sys.modules[name] = None
    sys.meta_path.insert(0, _Hidden(names))


if __name__ == "__main__":
    hidden = [n for n in sys.argv[1].split(",") if n]
    module, _, func = sys.argv[2].partition(":")
    hide(hidden)
    entry = getattr(importlib.import_module(module), func)
    sys.argv = [module, *sys.argv[3:]]
    sys.exit(entry())
