"""Perturbed views: forwards that see θ + d while the stored weights stay θ.

:class:`PerturbedViews` hooks every module that owns trainable parameters. While a combination
``d = mean_coeff·μ + Σ_j c_j·z(s_j)`` is shown, each such module's forward runs on
``pgap_kernels.perturbed(θ_p, ...)`` copies of its own parameters (one fused pass per parameter,
the same numbers ``perturb_`` would have written), swapped in by a forward pre-hook and swapped
out by a forward hook that also runs when the forward raises. The stored tensors are never
written, so an interrupted forward cannot leave the model perturbed, and bf16/fp16 weights do
not pick up the rounding noise of ±ε·z. Only the copies of the module running now are alive, in
one reused arena (kept between forwards, so that no forward allocates), except that a parameter
owned by several modules (a tied embedding / ``lm_head``) is copied once per shown combination
and kept until the next one: the extra memory is that parameter plus one module's parameters.

Requirement: a parameter must be read inside the forward of a module that owns it (true for
``nn.Linear``, ``nn.Embedding``, the norms and every Hugging Face decoder we know of). A
parameter read elsewhere would see θ, not θ + d. FSDP2: the hooks run inside FSDP2's
unshard/reshard, so they copy the unsharded parameter (stream index 0 on: the sharded run's
global indices); a mean term (LDSD) on sharded parameters is not supported.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

import pgap_kernels

from .params import Trainable, is_dtensor

MeansFor = Callable[[Trainable], Optional[torch.Tensor]]
ALIGN = 64  # bytes: each copy starts on a cache line of the arena


class PerturbedViews:
    """Hooks that show ``combo`` (seeds, coeffs, mean_coeff) to the forwards of ``model``.

    ``show(seeds, coeffs, mean_coeff)`` sets what the next forwards see; ``hide()`` shows θ
    again (the state outside a step); ``only=`` limits what is shown to some trainables (P-GAP's
    and AGZO's vectors, whose matrices go through their side paths). ``means(t)`` gives μ of
    trainable ``t`` when the shown combination has a mean term (LDSD).
    """

    def __init__(self, model: nn.Module, trainables: Sequence[Trainable],
                 means: Optional[MeansFor] = None) -> None:
        if means is not None and any(t.sharded for t in trainables):
            raise ValueError("perturbed views (mode='functional') do not support a mean term (LDSD) "
                             "on FSDP2-sharded parameters; use mode='inplace'")
        by_param = {id(t.param): t for t in trainables}
        self.means = means
        self.seeds: Tuple[int, ...] = ()
        self.coeffs: Tuple[float, ...] = ()
        self.mean_coeff = 0.0
        self.only: Optional[set] = None
        self.shown = False
        self.showed: set = set()  # trainables whose perturbed copy a forward used since show()
        self.live_bytes = 0  # bytes of the copies alive now, and the most ever alive at once
        self.peak_bytes = 0
        self._arena: Optional[torch.Tensor] = None  # uint8 room for the copies, reused
        # a parameter owned by several modules (a tied embedding / lm_head) is copied once per
        # shown combination and kept until the next show/hide: its own allocation, not the arena
        self._kept: Dict[str, torch.Tensor] = {}
        self.kept_bytes = 0
        users: Dict[str, int] = {}
        # trainable name -> (the parameter object the module holds now, its stored data)
        self._swapped: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles = []
        self._stacks: List[List[List[Tuple[str, int]]]] = []
        self.covered: List[Trainable] = []
        seen = set()
        for module in model.modules():
            owned = [(name, by_param[id(p)]) for name, p in module.named_parameters(recurse=False)
                     if id(p) in by_param]
            if not owned:
                continue
            for _, t in owned:
                users[t.name] = users.get(t.name, 0) + 1
                if t.name not in seen:
                    seen.add(t.name)
                    self.covered.append(t)
            stack: List[List[Tuple[str, int]]] = []  # per call of this module: what its pre-hook swapped
            self._stacks.append(stack)
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(owned, stack)))
            self._handles.append(module.register_forward_hook(self._post_hook(stack), always_call=True))
        self._shared = {name for name, n in users.items() if n > 1}

    # -- what the forwards see -------------------------------------------------------------
    def show(self, seeds: Sequence[int], coeffs: Sequence[float], mean_coeff: float = 0.0,
             only: Optional[Sequence[Trainable]] = None) -> None:
        """The next forwards see θ + mean_coeff·μ + Σ_j coeffs[j]·z(seeds[j]) on the covered
        parameters (on those among ``only`` when given; the others then see θ)."""
        self.seeds, self.coeffs, self.mean_coeff = tuple(seeds), tuple(coeffs), float(mean_coeff)
        self.only = None if only is None else {t.name for t in only}
        self.shown = bool(self.seeds) or self.mean_coeff != 0.0
        self.showed = set()
        self._kept.clear()
        self.kept_bytes = 0

    def hide(self) -> None:
        """The next forwards see the stored weights θ."""
        self.show((), (), 0.0)

    # -- hooks -----------------------------------------------------------------------------
    def _alloc(self, like: torch.Tensor) -> Tuple[torch.Tensor, int]:
        """Room for a copy of ``like`` and the bytes it takes: the next slice of the arena (a
        stack: copies are freed in the reverse order of their modules' calls), grown while no
        copy is alive; a fresh tensor when a nested module finds the arena full."""
        nbytes = like.numel() * like.element_size()
        size = -(-nbytes // ALIGN) * ALIGN
        top = self.live_bytes
        if self._arena is None or top + size > self._arena.numel():
            if top:
                return torch.empty_like(like), size
            self._arena = torch.empty(size, dtype=torch.uint8, device=like.device)
        room = self._arena[top:top + nbytes].view(like.dtype).view(like.shape)
        return room, size

    def _copy(self, p: torch.Tensor, t: Trainable) -> Tuple[torch.Tensor, int]:
        """The perturbed copy of ``p`` and the arena bytes it takes (0 for a kept copy)."""
        if t.name in self._shared:
            if t.name not in self._kept:
                self._kept[t.name] = self._perturbed(p, t, torch.empty_like(p.data))
                self.kept_bytes += p.numel() * p.element_size()
            return self._kept[t.name], 0
        out, size = self._alloc(p.data)
        return self._perturbed(p, t, out), size

    def _perturbed(self, p: torch.Tensor, t: Trainable, out: torch.Tensor) -> torch.Tensor:
        mean = self.means(t) if self.mean_coeff != 0.0 and self.means is not None else None
        # an FSDP2 parameter is unsharded while its module runs: the whole tensor, index 0 on
        pgap_kernels.perturbed(p.data, list(self.seeds), list(self.coeffs), key=t.key,
                               offset=0 if t.sharded else t.offset, mean=mean,
                               mean_coeff=self.mean_coeff if mean is not None else 0.0, out=out)
        return out

    def _pre_hook(self, owned: List[Tuple[str, Trainable]], stack: List[List[Tuple[str, int]]]):
        def hook(module: nn.Module, inputs) -> None:
            swapped: List[Tuple[str, int]] = []
            stack.append(swapped)  # even when empty: the post-hook pops one entry per call
            if not self.shown:
                return
            with torch.no_grad():
                for pname, t in owned:
                    if t.name in self._swapped:  # a tied parameter already shown by an outer module
                        continue
                    if self.only is not None and t.name not in self.only:
                        continue
                    p = module._parameters[pname]  # FSDP2: the unsharded parameter, now
                    if is_dtensor(p):
                        raise RuntimeError(f"parameter {t.name!r} is still sharded inside its module's "
                                           "forward; perturbed views need FSDP2's unsharded parameters")
                    copy, size = self._copy(p, t)
                    self.showed.add(t.name)
                    self._swapped[t.name] = (p, p.data)
                    p.data = copy
                    swapped.append((t.name, size))
                    self.live_bytes += size
                    self.peak_bytes = max(self.peak_bytes, self.live_bytes + self.kept_bytes)
        return hook

    def _post_hook(self, stack: List[List[Tuple[str, int]]]):
        def hook(module: nn.Module, inputs, output) -> None:
            if self._arena is not None and self._aliases_arena(output):
                self._arena = None  # the output is a view of a copy: it keeps that memory
            for name, size in stack.pop() if stack else ():
                entry = self._swapped.pop(name, None)
                if entry is not None:
                    self.live_bytes -= size
                    entry[0].data = entry[1]
        return hook

    def _aliases_arena(self, output) -> bool:
        """Whether ``output`` (a tensor or a tuple/list of them) views the arena's memory."""
        items = output if isinstance(output, (tuple, list)) else (output,)
        base = self._arena.untyped_storage().data_ptr()
        return any(isinstance(x, torch.Tensor) and x.device == self._arena.device and
                   x.untyped_storage().data_ptr() == base for x in items)

    def unshown(self) -> List[str]:
        """Names of the covered trainables (those among ``only``, when given) that no forward
        since the last :meth:`show` ran through its module: a closure that skipped their module
        or read them directly would have seen θ, not θ + d."""
        return [t.name for t in self.covered if t.name not in self.showed
                and (self.only is None or t.name in self.only)]

    def restore_all(self) -> None:
        """Put every stored tensor back. Forward hooks with ``always_call`` do this when a forward
        raises an ``Exception``, not on ``KeyboardInterrupt``: the optimizers call this on every
        failed step."""
        for stack in self._stacks:
            stack.clear()
        for p, stored in self._swapped.values():
            p.data = stored
        self._swapped.clear()
        self.live_bytes = 0
        self._kept.clear()
        self.kept_bytes = 0

    def remove(self) -> None:
        self.restore_all()
        self.hide()
        self._arena = None
        for h in self._handles:
            h.remove()
        self._handles.clear()
