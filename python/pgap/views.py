"""Perturbed views: forwards that see θ + d while the stored weights stay θ.

:class:`PerturbedViews` hooks every module that owns trainable parameters. While a combination
``d = mean_coeff·μ + Σ_j c_j·z(s_j)`` is shown, each such module's forward runs on
perturbed copies of its parameters, the same numbers ``perturb_`` would have written, swapped in
by a forward pre-hook and swapped out by a forward hook that also runs when the forward raises.
The stored tensors are never written, so an interrupted forward cannot leave the model
perturbed, and bf16/fp16 weights do not pick up the rounding noise of ±ε·z.

Units. The hooks sit on *units*: ``unit="block"`` (default) takes the largest modules whose
trainable parameters fit in a budget (``max(largest trainable, total/16)`` bytes: a decoder
layer, the embedding, the final norm), and copies all of a unit's parameters in one
``pgap_kernels.perturbed_many`` call when the unit's forward starts (on a GPU every call costs
~100 µs of host time: ~30 calls per forward instead of one per parameter). That call goes
through a :class:`pgap_kernels.PerturbedManyPlan` kept per unit: the parameters, their copies in
the arena, keys, offsets and means are checked once, and each forward passes only the seeds and
coefficients; a unit whose tensors changed (new ``.data``, a new arena or mean) gets a new plan.
``unit="module"``
hooks every module that owns a trainable directly (one call per module; used for FSDP2-sharded
models, whose unsharded parameters exist only inside the wrapped modules' forwards).
Only the copies of the units running now are alive, in one reused arena (kept between
forwards, so that no forward allocates), except that a parameter owned by several modules (a
tied embedding / ``lm_head``) is copied once per shown combination and kept until the next one:
the extra memory is that parameter plus one unit's parameters.

Requirement: a parameter must be read inside the forward of a module that owns it, while its
unit's forward runs (true for ``nn.Linear``, ``nn.Embedding``, the norms and every Hugging Face
decoder we know of). A parameter read elsewhere would see θ, not θ + d: until the first check
(:meth:`PerturbedViews.unshown`, the optimizers' first step) light hooks on the owning modules
record which parameters a forward read under their perturbed copies, so a closure that breaks
the requirement is refused instead of training nothing. FSDP2: the hooks run inside FSDP2's
unshard/reshard, so they copy the unsharded parameter (stream index 0 on: the sharded run's
global indices); a mean term (LDSD) on sharded parameters is not supported.

Copies in the autocast dtype. When a unit's forward starts inside ``torch.autocast`` (bf16 or
fp16; pgap-finetune's ``bf16-mixed``), the float32 weights and biases that only plain
``nn.Linear`` modules of the unit read are copied straight into that dtype (``perturbed_many``
with a narrower ``out``): the bits autocast would cast their float32 copy to, so every forward
gives the same numbers, while each copy writes half the bytes and autocast has nothing left to
cast. Everything else (norms, embeddings) is copied in its own dtype, as autocast leaves it; a
tied embedding / ``lm_head`` gets both copies, float32 for the embedding's forward and narrow for
``lm_head``'s (not in paired forwards). ``narrow=False`` turns this off: for a model that also
reads such a weight with an op autocast leaves in float32 (it would see the bf16 values).
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

import pgap_kernels

from .autocast import active_dtype
from .mechanism import Mechanism
from .paired import HalfRunner, mirror_
from .params import Trainable, is_dtensor

MeansFor = Callable[[Trainable], Optional[torch.Tensor]]
ALIGN = 64  # bytes: each copy starts on a cache line of the arena
MAX_UNIT_PLANS = 1024  # cached unit plans (a few per unit); all dropped beyond that
_NO_BUFFER = torch.empty(0)  # stands for a tied parameter's kept buffer that does not exist (yet)
UNIT_CHOICES = ("block", "module")
# paired forwards, the θ − d copies: "draw" (the kernels again with −d, the numbers the unpaired
# forward sees), "mirror" (2θ − (θ + d), one elementwise pass, no second draw: pgap.paired.mirror_;
# for bf16 weights a different estimate, docs/optimizers.md) or "auto" (default: mirror float32
# parameters, draw the others)
PAIR_COPIES = ("auto", "draw", "mirror")
BLOCK_SHARE = 16  # unit="block": a unit holds at most 1/16 of the trainable bytes (or the largest one)
Entry = Tuple[nn.Module, str, Trainable]  # (the module that owns it, its name there, the trainable)
Swapped = Tuple[List[str], int, int]  # per unit call: the names swapped, + copies' bytes, − copies' bytes


def _nbytes(t: Trainable) -> int:
    return t.param.numel() * t.param.element_size()


class _UnitPlan:
    """One unit call's copies (arena slices and kept buffers, reused) and the plans that fill
    them: one per mean/no-mean group of the parameters it fills, with whether it has the mean."""

    __slots__ = ("arena", "params", "copies", "size", "means", "plans")

    def __init__(self, arena: Optional[torch.Tensor], params: List[torch.Tensor],
                 copies: List[torch.Tensor], size: int, means: List[Optional[torch.Tensor]],
                 plans: List[Tuple[pgap_kernels.PerturbedManyPlan, bool]]) -> None:
        self.arena, self.params, self.copies, self.size = arena, params, copies, size
        self.means, self.plans = means, plans

    def serves(self, arena: Optional[torch.Tensor], params: List[torch.Tensor],
               means: List[Optional[torch.Tensor]], buffers: List[Optional[torch.Tensor]]) -> bool:
        """Whether these are still the unit's parameter objects, arena (when it has arena
        slices), kept buffers (None where a copy is an arena slice) and means (the plans check
        the tensors' memory themselves)."""
        return ((self.arena is None or self.arena is arena)
                and all(a is b for a, b in zip(self.params, params))
                and all(b is None or b is c for b, c in zip(buffers, self.copies))
                and all(a is b for a, b in zip(self.means, means)))


def arena_rooms(arena: Optional[torch.Tensor], top: int, likes: Sequence[torch.Tensor],
                dtypes: Optional[Sequence[torch.dtype]] = None
                ) -> Tuple[Optional[torch.Tensor], List[torch.Tensor], int, bool]:
    """Room for copies of ``likes`` (shaped like them, of ``dtypes[p]`` or their own dtype) in
    ``arena`` (uint8) above byte ``top``, each on a cache line: (the arena, possibly a new one
    grown to fit when ``top`` is 0, the rooms, the bytes they take, whether they are arena
    slices); fresh tensors when a nested unit finds the arena full (top > 0) or the devices
    differ. A stack: the caller frees in the reverse order."""
    dtypes = [x.dtype for x in likes] if dtypes is None else list(dtypes)
    nbytes = [x.numel() * d.itemsize for x, d in zip(likes, dtypes)]
    sizes = [-(-n // ALIGN) * ALIGN for n in nbytes]
    total = sum(sizes)
    device = likes[0].device

    def fresh() -> List[torch.Tensor]:
        return [torch.empty(x.shape, dtype=d, device=x.device) for x, d in zip(likes, dtypes)]

    if any(x.device != device for x in likes):
        return arena, fresh(), total, False
    if arena is None or top + total > arena.numel() or arena.device != device:
        if top:
            return arena, fresh(), total, False
        arena = torch.empty(total, dtype=torch.uint8, device=device)
    rooms = []
    for x, d, n, size in zip(likes, dtypes, nbytes, sizes):
        rooms.append(arena[top:top + n].view(d).view(x.shape))
        top += size
    return arena, rooms, total, True


def kept_buffer(buffers: Dict, key, like: torch.Tensor, dtype: Optional[torch.dtype] = None
                ) -> Tuple[torch.Tensor, bool]:
    """``buffers[key]`` if it still fits ``like`` (shape, device, and ``dtype`` or like's), else a
    new one stored there: (the buffer, whether it is new)."""
    dtype = like.dtype if dtype is None else dtype
    buffer = buffers.get(key)
    if buffer is not None and buffer.shape == like.shape and buffer.dtype == dtype \
            and buffer.device == like.device:
        return buffer, False
    buffers[key] = torch.empty(like.shape, dtype=dtype, device=like.device)
    return buffers[key], True


def _runs_forward(module: nn.Module) -> bool:
    """Whether calling ``module`` runs a forward (``nn.ModuleList``/``ModuleDict`` have none)."""
    return type(module).forward is not nn.Module.forward


def find_units(model: nn.Module, trainables: Sequence[Trainable], unit: str = "block",
               budget: Optional[int] = None) -> List[Tuple[nn.Module, List[Entry]]]:
    """The modules to hook and, for each, the trainables it shows (see the module docstring).

    ``unit="module"``: every module owning a trainable, with the ones it owns. ``"block"``: from
    the root down, a module that runs a forward and whose trainables take at most ``budget``
    bytes (default ``max(largest trainable, total/16)``) is a unit with every trainable under
    it; a larger one shows its own and its children are visited. A trainable owned by several
    modules (tied) appears in each owner's unit.
    """
    by_param = {id(t.param): t for t in trainables}

    def owned(module: nn.Module) -> List[Entry]:
        return [(module, name, by_param[id(p)]) for name, p in module.named_parameters(recurse=False)
                if id(p) in by_param]

    if unit == "module":
        return [(m, entries) for m in model.modules() for entries in [owned(m)] if entries]
    if budget is None:
        budget = max([_nbytes(t) for t in trainables] + [sum(map(_nbytes, trainables)) // BLOCK_SHARE])
    units: List[Tuple[nn.Module, List[Entry]]] = []
    seen: set = set()

    def visit(module: nn.Module) -> None:
        if id(module) in seen:
            return
        below = [m for m in module.modules() if id(m) not in seen]
        entries = [e for m in below for e in owned(m)]
        if not entries:
            return
        size = sum(_nbytes(t) for t in {e[2].name: e[2] for e in entries}.values())
        if _runs_forward(module) and size <= budget:
            seen.update(id(m) for m in below)
            units.append((module, entries))
            return
        seen.add(id(module))
        own = owned(module)
        if own:
            units.append((module, own))
        for child in module.children():
            visit(child)

    visit(model)
    return units


class PerturbedViews:
    """Hooks that show ``combo`` (seeds, coeffs, mean_coeff) to the forwards of ``model``.

    ``show(seeds, coeffs, mean_coeff)`` sets what the next forwards see; ``hide()`` shows θ
    again (the state outside a step); ``only=`` limits what is shown to some trainables (P-GAP's
    and AGZO's vectors, whose matrices go through their side paths). ``means(t)`` gives μ of
    trainable ``t`` when the shown combination has a mean term (LDSD). ``unit``: "block",
    "module", or "auto" (default: "module" when a trainable is FSDP2-sharded, else "block");
    ``unit_bytes``: the block budget of :func:`find_units` (default there). ``narrow``: inside
    ``torch.autocast``, copy the float32 parameters of plain ``nn.Linear`` modules straight into
    the autocast dtype (module docstring; the attribute may be changed between steps).
    """

    def __init__(self, model: nn.Module, trainables: Sequence[Trainable],
                 means: Optional[MeansFor] = None, unit: str = "auto",
                 unit_bytes: Optional[int] = None, distribution: str = "gaussian",
                 narrow: bool = True) -> None:
        if means is not None and any(t.sharded for t in trainables):
            raise ValueError("perturbed views (mode='functional') do not support a mean term (LDSD) "
                             "on FSDP2-sharded parameters; use mode='inplace'")
        if unit == "auto":
            unit = "module" if any(t.sharded for t in trainables) else "block"
        if unit not in UNIT_CHOICES:
            raise ValueError(f"unit must be one of 'auto', {', '.join(map(repr, UNIT_CHOICES))}; got {unit!r}")
        self.unit = unit
        self.narrow = narrow
        self.means = means
        self.distribution = distribution  # the stream of z (pgap_kernels.STREAM_VERSIONS)
        self.seeds: Tuple[int, ...] = ()
        self.coeffs: Tuple[float, ...] = ()
        self.mean_coeff = 0.0
        self.only: Optional[set] = None
        self.shown = False
        self.showed: set = set()  # trainables a forward read under their copy since show()
        self.live_bytes = 0  # bytes of the copies alive now, and the most ever alive at once
        self.peak_bytes = 0
        self.calls = 0  # perturbed_many calls made so far (one per unit forward showing copies)
        self._arena: Optional[torch.Tensor] = None  # uint8 room for the copies, reused
        # a parameter owned by several modules (a tied embedding / lm_head) is copied once per
        # shown combination and copy dtype (the (name, dtype) pairs in _kept) into its own buffer,
        # not the arena; the buffer stays allocated, as the arena does (a fresh one per show
        # would page-fault every time)
        self._kept: set = set()
        self._kept_buffers: Dict[Tuple[str, torch.dtype], torch.Tensor] = {}
        self.kept_bytes = 0
        # (names, which are filled, arena offset, mean?) -> the unit call's copies and plans;
        # emptied whenever the arena or a kept buffer is replaced
        self._plans: Dict[tuple, _UnitPlan] = {}
        # trainable name -> (the parameter object the module holds now, its stored data)
        self._swapped: Dict[str, Tuple[torch.Tensor, torch.Tensor]] = {}
        self._handles = []
        self._witnesses = []  # hooks recording reads until stop_witnessing()
        self._stacks: List[List[Swapped]] = []
        # paired forwards: the θ − d copies of the parameters swapped now (tied ones: kept until the
        # next show, in _minus_buffers), in their own arena (a stack, as the + copies')
        self.paired = False
        self._minus: Dict[str, torch.Tensor] = {}
        self._minus_buffers: Dict[str, torch.Tensor] = {}
        self._minus_arena: Optional[torch.Tensor] = None
        self._minus_top = 0
        self.pairs = HalfRunner(self._minus.get)
        self.pair_copies = "auto"  # how the θ − d copies are made: PAIR_COPIES
        self._by_name = {t.name: t for t in trainables}
        self._owners: List[Tuple[nn.Module, List[Tuple[str, str]]]] = []
        self.covered: List[Trainable] = []
        users: Dict[str, int] = {}
        for module, entries in find_units(model, trainables, unit, unit_bytes):
            stack: List[Swapped] = []  # per call of this unit: what its pre-hook swapped
            self._stacks.append(stack)
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(entries, stack)))
            self._handles.append(module.register_forward_hook(self._post_hook(stack), always_call=True))
        for module, entries in find_units(model, trainables, "module"):  # every owning module once
            for _, _, t in entries:
                users[t.name] = users.get(t.name, 0) + 1
                if users[t.name] == 1:
                    self.covered.append(t)
            names = [t.name for _, _, t in entries]
            self._witnesses.append(module.register_forward_pre_hook(self._witness(names)))
            self._owners.append((module, [(attr, t.name) for _, attr, t in entries]))
        self._shared = {name for name, n in users.items() if n > 1}

    # -- what the forwards see -------------------------------------------------------------
    def show(self, seeds: Sequence[int], coeffs: Sequence[float], mean_coeff: float = 0.0,
             only: Optional[Sequence[Trainable]] = None, paired: bool = False) -> None:
        """The next forwards see θ + d, d = mean_coeff·μ + Σ_j coeffs[j]·z(seeds[j]), on the
        covered parameters (on those among ``only`` when given; the others then see θ).
        ``paired``: the next forwards run a doubled batch, its first half seeing θ + d and its
        second θ − d (:mod:`pgap.paired`; not with FSDP2-sharded parameters)."""
        self.seeds, self.coeffs, self.mean_coeff = tuple(seeds), tuple(coeffs), float(mean_coeff)
        self.only = None if only is None else {t.name for t in only}
        self.shown = bool(self.seeds) or self.mean_coeff != 0.0
        if paired and not self.shown:
            raise ValueError("paired=True needs a direction to show (seeds or a mean term)")
        if paired and self.unit == "module":
            raise ValueError("paired forwards are not supported with FSDP2-sharded parameters")
        self.paired = paired
        self.showed = set()
        self._kept.clear()
        self.kept_bytes = 0
        self._minus.clear()
        self.pairs.reset()
        if paired:
            self.pairs.install(self._owners)
        else:
            self.pairs.remove()

    def hide(self) -> None:
        """The next forwards see the stored weights θ."""
        self.show((), (), 0.0)

    # -- hooks -----------------------------------------------------------------------------
    def _alloc(self, likes: Sequence[torch.Tensor], dtypes: Sequence[torch.dtype]
               ) -> Tuple[List[torch.Tensor], int, bool]:
        """Room for copies of ``likes`` (of ``dtypes``) above the live copies
        (:func:`arena_rooms`), the bytes they take, and whether they are arena slices; a new
        arena drops the plans."""
        arena, rooms, total, reusable = arena_rooms(self._arena, self.live_bytes, likes, dtypes)
        if arena is not self._arena:
            self._arena = arena
            self._plans.clear()  # their copies are slices of the old arena
        return rooms, total, reusable

    def _groups(self, sources: List[torch.Tensor], todo: List[Trainable], outs: List[torch.Tensor],
                means: List[Optional[torch.Tensor]], minus: Optional[List[torch.Tensor]] = None):
        """``perturbed_many``'s tensor-side arguments for ``outs[p]`` <- the shown combination on
        ``sources[p]`` (trainable ``todo[p]``, mean ``means[p]``; and ``minus[p]`` <- its mirror
        when given), in as few calls as the mean terms allow (one, unless only some trainables
        have a mean): (keyword arguments, with a mean?) per call."""
        for with_mean in (False, True):
            ps = [p for p, m in enumerate(means) if (m is not None) == with_mean]
            if ps:
                # an FSDP2 parameter is unsharded while its module runs: the whole tensor, index 0 on
                yield dict(tensors=[sources[p] for p in ps], keys=[todo[p].key for p in ps],
                           offsets=[0 if todo[p].sharded else todo[p].offset for p in ps],
                           mean=[means[p] for p in ps] if with_mean else None,
                           out=[outs[p] for p in ps], distribution=self.distribution,
                           **({} if minus is None else {"out_minus": [minus[p] for p in ps]})), with_mean

    def _fill(self, sources: List[torch.Tensor], todo: List[Trainable], outs: List[torch.Tensor],
              means: List[Optional[torch.Tensor]], sign: float = 1.0,
              minus: Optional[List[torch.Tensor]] = None) -> None:
        """The calls of :meth:`_groups`, each validated in full (copies that are not reused);
        ``sign`` -1: the copies of θ − d; ``minus``: also the copies of θ − d there, in the same
        calls."""
        for kwargs, with_mean in self._groups(sources, todo, outs, means, minus):
            pgap_kernels.perturbed_many(seeds=list(self.seeds), coeffs=[sign * c for c in self.coeffs],
                                        mean_coeff=sign * self.mean_coeff if with_mean else 0.0, **kwargs)
            self.calls += 1

    def _run_plans(self, unit: _UnitPlan) -> None:
        """Fill ``unit``'s copies with the shown combination; StalePlanError (nothing written)
        when a tensor of one of its plans changed."""
        for plan, with_mean in unit.plans:
            plan(self.seeds, self.coeffs, mean_coeff=self.mean_coeff if with_mean else 0.0)
            self.calls += 1

    def _pre_hook(self, entries: List[Entry], stack: List[Swapped]):
        # what autocast casts (F.linear's weight and bias) and nothing else in this unit reads:
        # copied in the autocast dtype inside an autocast region (a tied embedding / lm_head gets
        # a float32 copy in the embedding's unit and a narrow one in lm_head's)
        linear_here = {t.name for _, _, t in entries
                       if all(type(o) is nn.Linear for o, _, u in entries if u.name == t.name)}

        def hook(module: nn.Module, inputs) -> None:
            if not self.shown:
                stack.append(([], 0, 0))  # even when empty: the post-hook pops one entry per call
                return
            params: Dict[str, Tuple[torch.Tensor, Trainable]] = {}
            for owner, pname, t in entries:
                if t.name in self._swapped or t.name in params:  # tied: already shown
                    continue
                if self.only is not None and t.name not in self.only:
                    continue
                p = owner._parameters[pname]  # FSDP2: the unsharded parameter, now
                if is_dtensor(p):
                    raise RuntimeError(f"parameter {t.name!r} is still sharded inside its module's "
                                       "forward; perturbed views need FSDP2's unsharded parameters")
                params[t.name] = (p, t)
            names = list(params)
            dtypes = self._copy_dtypes(list(params.values()), linear_here)
            fused = self._fused_pair(list(params.values()), dtypes) if self.paired else None
            if fused is None:
                with torch.no_grad():
                    copies, size = self._copies(list(params.values()), dtypes)
            else:
                copies, size, minus_size = fused
            for name, copy in zip(names, copies):
                p = params[name][0]
                self._swapped[name] = (p, p.data)
                p.data = copy
            if fused is None:
                minus_size = self._minus_copies(names) if self.paired else 0
            stack.append((names, size, minus_size))
            self.live_bytes += size
            self._minus_top += minus_size
            self.peak_bytes = max(self.peak_bytes, self.live_bytes + self._minus_top + self.kept_bytes)
        return hook

    def _copy_dtypes(self, params: List[Tuple[torch.Tensor, Trainable]], linear_here: set
                     ) -> List[torch.dtype]:
        """The dtype of each parameter's copy for the unit forward starting now: the autocast
        dtype (bf16/fp16) for a float32 parameter that only plain ``nn.Linear`` modules of the
        unit read (``linear_here``), inside an autocast region of its device, with :attr:`narrow`
        (not a tied parameter in a paired forward, whose − copies are one per name); else the
        parameter's own."""
        computes: Dict[str, Optional[torch.dtype]] = {}  # device type -> the autocast dtype now
        dtypes = []
        for x, t in params:
            dtype = x.dtype
            if self.narrow and t.name in linear_here and x.dtype == torch.float32 \
                    and not (self.paired and t.name in self._shared):
                if x.device.type not in computes:
                    computes[x.device.type] = active_dtype(x.device.type)
                if computes[x.device.type] in (torch.bfloat16, torch.float16):
                    dtype = computes[x.device.type]
            dtypes.append(dtype)
        return dtypes

    @property
    def _with_mean(self) -> bool:
        """Whether the shown combination has a mean term."""
        return self.mean_coeff != 0.0 and self.means is not None

    def _means_of(self, trainables: Sequence[Trainable]) -> List[Optional[torch.Tensor]]:
        """The mean term's tensor of each of ``trainables`` for the shown combination (None for
        all when it has no mean term)."""
        if not self._with_mean:
            return [None] * len(trainables)
        return [self.means(t) for t in trainables]

    def _drawn(self, dtype: torch.dtype, copy_dtype: torch.dtype) -> bool:
        """Whether a paired forward draws the − copy of a parameter of ``dtype`` whose copies are
        ``copy_dtype`` (:attr:`pair_copies`; a copy into another dtype is always drawn)."""
        return (self.pair_copies == "draw" or copy_dtype != dtype
                or (self.pair_copies == "auto" and dtype != torch.float32))

    def _fused_pair(self, params: List[Tuple[torch.Tensor, Trainable]], dtypes: List[torch.dtype]
                    ) -> Optional[Tuple[List[torch.Tensor], int, int]]:
        """Paired forwards, every − copy drawn and no tied parameter: both copies of every
        parameter from one ``perturbed_many`` call with ``out_minus`` (the native backend draws z
        once for both, the others run its second pass), the − copies recorded as
        :meth:`_minus_copies` records them. (+ copies, their arena bytes, the − copies'
        minus-arena bytes), or None where this does not apply (then :meth:`_copies` and
        :meth:`_minus_copies`)."""
        if not params or any(t.name in self._shared or not self._drawn(x.dtype, d)
                             for (x, t), d in zip(params, dtypes)):
            return None
        likes = [x.data for x, _ in params]
        rooms, size, _ = self._alloc(likes, dtypes)
        self._minus_arena, minus, minus_size, _ = arena_rooms(self._minus_arena, self._minus_top,
                                                              likes, dtypes)
        todo = [t for _, t in params]
        with torch.no_grad():
            self._fill(likes, todo, rooms, self._means_of(todo), minus=minus)
        self._minus.update((t.name, copy) for t, copy in zip(todo, minus))
        return rooms, size, minus_size

    def _minus_copies(self, names: List[str]) -> int:
        """Paired forwards: the θ − d copies of the parameters ``names`` just swapped in (their θ + d
        copies), drawn or mirrored (:attr:`pair_copies`), into the minus arena, or for a tied
        parameter a kept buffer made once per show. Returns the minus-arena bytes taken."""
        fresh = [n for n in names if n not in self._shared]
        arena, rooms, size, _ = (arena_rooms(self._minus_arena, self._minus_top,  # like the + copies
                                             [self._swapped[n][0].data for n in fresh]) if fresh else
                                 (self._minus_arena, [], 0, True))
        self._minus_arena = arena
        outs = dict(zip(fresh, rooms))
        for name in names:
            if name in self._shared and name not in self._minus:
                outs[name] = kept_buffer(self._minus_buffers, name, self._swapped[name][1])[0]
                self.kept_bytes += outs[name].numel() * outs[name].element_size()
        mirrored = [n for n in outs
                    if not self._drawn(self._swapped[n][1].dtype, self._swapped[n][0].data.dtype)]
        todo = [n for n in outs if n not in mirrored]
        with torch.no_grad():
            for name in mirrored:
                p, stored = self._swapped[name]
                mirror_(outs[name], p.data, stored)
            if todo:
                trainables = [self._by_name[name] for name in todo]
                self._fill([self._swapped[name][1] for name in todo], trainables,
                           [outs[name] for name in todo], self._means_of(trainables), sign=-1.0)
        self._minus.update(outs)
        return size

    def _copies(self, params: List[Tuple[torch.Tensor, Trainable]], dtypes: List[torch.dtype]
                ) -> Tuple[List[torch.Tensor], int]:
        """The perturbed copies of ``params`` (in order, of ``dtypes``) and the arena bytes they
        take: arena slices, or for a tied parameter its kept copy (made on its first use since
        show()).

        The copies and the plans filling them are reused from the unit's last call with the same
        parameters, arena offset and means (:class:`_UnitPlan`); else made anew, and kept when
        they are all arena slices or kept buffers."""
        todo = [p for p, (_, t) in enumerate(params)  # arena copies first, then the tied ones
                if t.name not in self._shared] + [p for p, (_, t) in enumerate(params)
                                                  if t.name in self._shared
                                                  and (t.name, dtypes[p]) not in self._kept]
        means = self._means_of([params[p][1] for p in todo])
        key = (tuple(t.name for _, t in params), tuple(todo), tuple(dtypes), self.live_bytes,
               self._with_mean)
        buffers = [self._kept_buffers.get((t.name, d), _NO_BUFFER) if t.name in self._shared else None
                   for (_, t), d in zip(params, dtypes)]
        unit = self._plans.get(key)
        if unit is not None and unit.serves(self._arena, [x for x, _ in params], means, buffers):
            try:
                self._run_plans(unit)
            except pgap_kernels.StalePlanError:  # e.g. a parameter got new .data: plan again
                unit = None
        else:
            unit = None
        if unit is None:
            unit = self._new_copies(params, todo, means, key, dtypes)
        for p in todo:
            x, t = params[p]
            if t.name in self._shared:
                self._kept.add((t.name, dtypes[p]))
                self.kept_bytes += x.numel() * dtypes[p].itemsize
        return unit.copies, unit.size

    def _new_copies(self, params: List[Tuple[torch.Tensor, Trainable]], todo: List[int],
                    means: List[Optional[torch.Tensor]], key: tuple, dtypes: List[torch.dtype]
                    ) -> _UnitPlan:
        """:meth:`_copies` without a reusable unit plan: room for the copies, and the plans that
        fill them (kept under ``key``), or one validated call per group when some copies are
        fresh tensors (a nested unit finding the arena full)."""
        arena_ps = [p for p, (_, t) in enumerate(params) if t.name not in self._shared]
        rooms, size, reusable = (self._alloc([params[p][0].data for p in arena_ps],
                                             [dtypes[p] for p in arena_ps]) if arena_ps
                                 else ([], 0, True))
        copies: List[Optional[torch.Tensor]] = [None] * len(params)
        for p, room in zip(arena_ps, rooms):
            copies[p] = room
        for p, (x, t) in enumerate(params):
            if t.name not in self._shared:
                continue
            copies[p], new = kept_buffer(self._kept_buffers, (t.name, dtypes[p]), x.data, dtypes[p])
            if new:
                self._plans.clear()  # a plan may hold the old buffer
        todo_t, outs = [params[p][1] for p in todo], [copies[p] for p in todo]
        if not reusable:
            self._fill([params[p][0].data for p in todo], todo_t, outs, means)
            return _UnitPlan(None, [], copies, size, [], [])
        # the plans read the parameter objects themselves: one given new .data is noticed
        plans = [(pgap_kernels.PerturbedManyPlan(**kwargs), with_mean)
                 for kwargs, with_mean in self._groups([params[p][0] for p in todo], todo_t, outs,
                                                       means)]
        unit = _UnitPlan(self._arena if arena_ps else None, [x for x, _ in params], copies, size,
                         means, plans)
        if len(self._plans) >= MAX_UNIT_PLANS:
            self._plans.clear()
        self._plans[key] = unit
        self._run_plans(unit)
        return unit

    def _post_hook(self, stack: List[Swapped]):
        def hook(module: nn.Module, inputs, output) -> None:
            self._release_aliased(output)  # an output viewing a copy keeps that memory
            names, size, minus_size = stack.pop() if stack else ([], 0, 0)
            self.live_bytes -= size
            self._minus_top -= minus_size
            for name in names:
                entry = self._swapped.pop(name, None)
                if entry is not None:
                    entry[0].data = entry[1]
                if name not in self._shared:
                    self._minus.pop(name, None)
        return hook

    def _witness(self, names: List[str]):
        def hook(module: nn.Module, inputs) -> None:
            if self.shown:
                self.showed.update(n for n in names if n in self._swapped)
        return hook

    def stop_witnessing(self) -> None:
        """Remove the hooks that record which trainables a forward read under their copies (the
        check of :meth:`unshown` is done; they cost Python time on every module call)."""
        for h in self._witnesses:
            h.remove()
        self._witnesses.clear()

    def _release_aliased(self, output) -> None:
        """Drop the arena or a kept buffer that ``output`` (a tensor or a tuple/list of them)
        views: the output keeps that memory, and the next copies go elsewhere."""
        items = [x for x in (output if isinstance(output, (tuple, list)) else (output,))
                 if isinstance(x, torch.Tensor)]
        if not items:
            return
        pointers = {(x.device, x.untyped_storage().data_ptr()) for x in items}

        def aliased(buffer: torch.Tensor) -> bool:
            return (buffer.device, buffer.untyped_storage().data_ptr()) in pointers

        if self._arena is not None and aliased(self._arena):
            self._arena = None
            self._plans.clear()
        for key in [k for k, b in self._kept_buffers.items() if aliased(b)]:
            del self._kept_buffers[key]
            self._plans.clear()

    def unshown(self) -> List[str]:
        """Names of the covered trainables (those among ``only``, when given) that no forward
        since the last :meth:`show` read through their module while their copy was in place: a
        closure that skipped their module (or their unit) or read them directly would have seen
        θ, not θ + d. Needs the witness hooks (before :meth:`stop_witnessing`)."""
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
        self._minus.clear()
        self._minus_top = 0
        self.pairs.reset()

    def remove(self) -> None:
        self.restore_all()
        self.hide()
        self.stop_witnessing()
        self._arena = None
        self._kept_buffers.clear()
        self._minus_arena = None
        self._minus_buffers.clear()
        self._plans.clear()
        for h in self._handles:
            h.remove()
        self._handles.clear()


class Views(PerturbedViews, Mechanism):
    """:class:`PerturbedViews` as an optimizer's mechanism: :meth:`move` adds to what the forwards
    see (calls add up per seed), the first perturbed forward is checked to have read every shown
    parameter through its module, a failed step puts every stored tensor back."""

    def __init__(self, model: nn.Module, trainables: Sequence[Trainable], **kwargs) -> None:
        self._shown: Dict[int, float] = {}  # seed -> the coefficient shown now (move's running sums)
        self.reached = False  # set once the first perturbed forward was checked
        super().__init__(model, trainables, **kwargs)

    def move(self, trainables: Sequence[Trainable], seeds: Sequence[int], coeffs: Sequence[float]) -> None:
        """Add Σ_j coeffs[j]·z(seeds[j]) to what the next forwards see; the ``trainables`` of the
        last call are the ones shown. Mutates the shown combination only."""
        for seed, coeff in zip(seeds, coeffs):
            total = self._shown.get(seed, 0.0) + coeff
            if total == 0.0:
                self._shown.pop(seed, None)
            else:
                self._shown[seed] = total
        self.show(list(self._shown), list(self._shown.values()), only=trainables)

    def hide(self) -> None:
        """The next forwards see the stored weights θ (the running sums of :meth:`move` reset)."""
        self._shown = {}
        super().hide()

    def forward_checked(self) -> None:
        """Once, after the first perturbed forward: ValueError naming the trainable parameters
        that the forward did not read through their module's forward. Functional mode would show
        them nothing, so they would never train, silently: a closure that reads
        ``layer.weight`` directly, or a parameter no forward uses."""
        if not self.shown or self.reached:
            return
        missed = self.unshown()
        if missed:
            listed = ", ".join(missed[:5]) + (f" and {len(missed) - 5} more" if len(missed) > 5 else "")
            raise ValueError(
                f"mode='functional': the forward never ran the module that owns {listed}, so "
                "they saw their stored weights, not the perturbation, and would not train. "
                "Perturbed views need each trainable parameter read inside the forward of a "
                "module that owns it (docs/optimizers.md). Use mode='inplace', or freeze the "
                "parameters the loss does not use (requires_grad_(False)).")
        self.reached = True
        self.stop_witnessing()

    def abort(self) -> None:
        self.restore_all()
        self.hide()

    def close(self) -> None:
        self.remove()
