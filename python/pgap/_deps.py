"""Optional dependencies: which extra of ``pgap-kernels`` installs each optional module, and the
checks that name the exact install command before any work starts.

The checks never import what they check: modules are looked up with
``importlib.util.find_spec`` (a module already in ``sys.modules`` counts as installed, a ``None``
entry as missing) and wheels that are only read from (the embedded model and data) by their
distribution metadata. A library entry point raises :class:`MissingDependencyError` (an
ImportError); a console script prints its one-line message as ``<prog>: error: ...`` and exits
with status 2 (:func:`script_check`).
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import sys
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

PROJECT = "pgap-kernels"

# Import names each extra installs, as listed in pyproject.toml's [project.optional-dependencies]
# (tests/app/test_deps.py keeps the two in step). Only top-level module names.
EXTRAS: Dict[str, Tuple[str, ...]] = {
    "triton": ("triton",),
    "hf": ("transformers", "accelerate", "peft", "tqdm", "matplotlib"),
    "bench": ("tqdm", "matplotlib", "transformers"),
    "test": ("pytest", "scipy", "triton", "tqdm", "hypothesis", "transformers", "accelerate",
             "tokenizers", "peft", "matplotlib"),
}


def install_command(extra: str) -> str:
    """The exact command that installs ``extra``: ``pip install "pgap-kernels[<extra>]"``."""
    if extra not in EXTRAS:
        raise ValueError(f"extra must be one of {', '.join(map(repr, EXTRAS))}; got {extra!r}")
    return f'pip install "{PROJECT}[{extra}]"'


def module_installed(name: str) -> bool:
    """Whether the top-level module ``name`` can be imported, found without importing it."""
    if name in sys.modules:
        return sys.modules[name] is not None
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a finder refusing the name; a broken __spec__
        return False


def distribution_installed(name: str) -> bool:
    """Whether the distribution (wheel) ``name`` is installed, by its metadata only."""
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


@dataclass(frozen=True)
class Need:
    """What one feature needs: ``modules`` (import names) and ``distributions`` (wheels read but
    never imported), ``install`` (the exact command that installs them all), ``what`` (the feature,
    e.g. "by pgap-finetune", "for the plots") and an optional ``hint`` (another way out, e.g.
    "--no-plot skips the plots")."""

    what: str
    modules: Tuple[str, ...]
    install: str
    distributions: Tuple[str, ...] = ()
    hint: str = ""

    def missing(self) -> List[str]:
        """The distributions and modules of this need that are not installed, in order."""
        return ([d for d in self.distributions if not distribution_installed(d)]
                + [m for m in self.modules if not module_installed(m)])


def extra_need(what: str, modules: Sequence[str], extra: str, hint: str = "") -> Need:
    """A :class:`Need` of ``modules`` installed by ``extra`` (each must be listed in
    ``EXTRAS[extra]``)."""
    install = install_command(extra)
    stray = [m for m in modules if m not in EXTRAS[extra]]
    if stray:
        raise ValueError(f"modules {stray} are not installed by the {extra!r} extra")
    return Need(what, tuple(modules), install, hint=hint)


class MissingDependencyError(ImportError):
    """Optional dependencies are not installed. ``missing`` names them, ``install`` holds the
    commands that install them; the message is one line naming both."""

    def __init__(self, missing: Sequence[str], install: Sequence[str], message: str) -> None:
        super().__init__(message)
        self.missing, self.install = tuple(missing), tuple(install)


def check(needs: Iterable[Need]) -> None:
    """Raise :class:`MissingDependencyError` if anything in ``needs`` is missing, with one
    message part per install command::

        missing tqdm, matplotlib (needed by pgap-finetune, for the plots); install with:
        pip install "pgap-kernels[hf]" (--no-plot skips the plots)
    """
    groups: Dict[str, Tuple[List[str], List[str], List[str]]] = {}
    for need in needs:
        absent = need.missing()
        if not absent:
            continue
        names, whats, hints = groups.setdefault(need.install, ([], [], []))
        names += [n for n in absent if n not in names]
        whats += [need.what] if need.what not in whats else []
        hints += [need.hint] if need.hint and need.hint not in hints else []
    if not groups:
        return
    parts = [f"missing {', '.join(names)} (needed {', '.join(whats)}); install with: {install}"
             + "".join(f" ({h})" for h in hints)
             for install, (names, whats, hints) in groups.items()]
    missing = [n for names, _, _ in groups.values() for n in names]
    raise MissingDependencyError(missing, list(groups), "; ".join(parts))


def require(what: str, modules: Sequence[str], extra: str) -> None:
    """For library entry points: raise :class:`MissingDependencyError` unless ``modules`` (of
    ``extra``) are installed."""
    check([extra_need(what, modules, extra)])


def script_check(prog: str, needs: Iterable[Need]) -> Optional[int]:
    """For console scripts, before any work: None when nothing is missing, else print
    ``<prog>: error: <the one-line message>`` to stderr and return the exit status 2."""
    try:
        check(needs)
    except MissingDependencyError as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    return None


def plot_or_warn(prog: str, draw: Callable[[], object]) -> bool:
    """Call ``draw()``; any Exception (matplotlib missing or failing) becomes one warning line on
    stderr instead of failing a run whose results are already written. True if it drew."""
    try:
        draw()
    except Exception as exc:  # noqa: BLE001 - a plot must never cost a finished run
        print(f"{prog}: warning: plotting failed, no plot written ({type(exc).__name__}: {exc})",
              file=sys.stderr)
        return False
    return True
