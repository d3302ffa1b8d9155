"""HellaSwag (and any multiple-choice eval) in llm.c's eval file format, scored as llm.c scores it.

The file (llm.c's dev/data/hellaswag.py writes the HellaSwag val split as hellaswag_val.bin):
    header: 256 int32   [0] magic 20240522, [1] version 1, [2] number of examples,
                        [3] the longest example in bytes
    then per example a run of uint16:
        65535 (start of example), the example's length in bytes (these fields included),
        its index (0, 1, ...), the label (index of the right completion), the number of completions,
        the context: its length N then N tokens,
        each completion: its length M then M tokens (GPT-2 tokens of " " + ending)

Scoring (llm.c's completion style, "acc_norm"): every completion is appended to the context and run
through the model; its score is the mean cross-entropy of its own tokens (each predicted from all
before it); the completion with the lowest mean loss is the model's answer (the first one on a tie).
Examples are split over the ranks in contiguous blocks of ceil(N / ranks), as llm.c does, and the
numbers of right answers summed.
"""
import os
from dataclasses import dataclass

import numpy as np

from .files import formats
from .files.atomic import atomic_write

MAGIC = 20240522
VERSION = 1
HEADER_INTS = 256
START = 65535


class EvalFileError(ValueError):
    """An eval file that is not in llm.c's format (the message names the file and the example)."""


@dataclass
class Example:
    index: int
    label: int
    context: list        # token ids
    completions: list    # lists of token ids


def write_eval_file(path, examples):
    """Write [(label, context tokens, [completion tokens, ...])] in llm.c's format."""
    stream, longest = [], 0
    for i, (label, context, completions) in enumerate(examples):
        ex = [START, 0, i, label, len(completions), len(context), *context]
        for c in completions:
            ex += [len(c), *c]
        ex[1] = 2 * len(ex)
        if max(ex[2:]) >= START or ex[1] >= 2 ** 16:
            raise ValueError(f"example {i} does not fit llm.c's uint16 eval format")
        longest = max(longest, ex[1])
        stream += ex
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:4] = (MAGIC, VERSION, len(examples), longest)
    with atomic_write(path) as f:
        f.write(header)
        f.write(np.array(stream, dtype="<u2"))


def read_eval_file(path):
    """The examples of an llm.c eval file, checked field by field."""
    path = os.fspath(path)
    formats.file_size(path, "HellaSwag eval file")   # a missing file or a directory: one line
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 * HEADER_INTS:
        raise EvalFileError(f"{path}: truncated eval file: the header alone is {4 * HEADER_INTS} bytes, "
                            f"the file has {len(raw)}")
    header = np.frombuffer(raw, dtype="<i4", count=HEADER_INTS)
    if header[0] != MAGIC:
        raise EvalFileError(f"{path}: bad magic number for an eval file: expected {MAGIC}, found {header[0]}")
    if header[1] != VERSION:
        raise EvalFileError(f"{path}: unsupported eval file version: expected {VERSION}, found {header[1]}")
    if (len(raw) - 4 * HEADER_INTS) % 2:
        raise EvalFileError(f"{path}: the data after the header is not a whole number of uint16")
    s = np.frombuffer(raw, dtype="<u2", offset=4 * HEADER_INTS)
    n, pos, examples, longest = int(header[2]), 0, [], 0
    if n <= 0:
        raise EvalFileError(f"{path}: the header says {n} examples: nothing to evaluate")
    for i in range(n):
        def bad(what):
            return EvalFileError(f"{path}: example {i} (at uint16 {pos}): {what}")
        if pos + 6 > s.size:
            raise bad(f"the file ends; the header says {n} examples")
        if s[pos] != START:
            raise bad(f"expected the start marker {START}, found {s[pos]}")
        nbytes, index, label, ncomp, nctx = (int(x) for x in s[pos + 1:pos + 6])
        end = pos + nbytes // 2
        if nbytes % 2 or nbytes < 12:
            raise bad(f"bad length {nbytes} bytes")
        if end > s.size:
            raise bad(f"the file ends {2 * (s.size - pos)} bytes into its {nbytes} (truncated; the header says "
                      f"{n} examples)")
        if index != i:
            raise bad(f"its index field says {index}")
        if not 0 <= label < ncomp:
            raise bad(f"label {label} is not one of its {ncomp} completions")
        q = pos + 6
        context = s[q:q + nctx].tolist()
        q += nctx
        completions = []
        for _ in range(ncomp):
            m = int(s[q]) if q < end else 0
            completions.append(s[q + 1:q + 1 + m].tolist())
            q += 1 + m
        if q != end or nctx == 0 or any(len(c) == 0 for c in completions):
            raise bad("its context and completions do not add up to its length (or one is empty)")
        examples.append(Example(index, label, context, completions))
        longest = max(longest, nbytes)
        pos = end
    if pos != s.size:
        raise EvalFileError(f"{path}: {2 * (s.size - pos)} bytes after the {n} examples the header announces")
    if header[3] < longest:   # llm.c sizes its example buffer by it
        raise EvalFileError(f"{path}: the header says the longest example is {header[3]} bytes, one is {longest}")
    return examples


def rank_range(num_examples, rank, size):
    """[start, end) of this rank's examples: contiguous blocks of ceil(N / size), as llm.c."""
    per = -(-num_examples // size)
    return min(per * rank, num_examples), min(per * (rank + 1), num_examples)


def check_examples(examples, vocab_size, max_len, source="the eval file"):
    """ValueError, naming `source`, for the first example a model of this vocabulary and maxT cannot
    score: a token id outside the vocabulary (a file tokenized for another model), or a completion
    that leaves no room for a token of context. Checked whole before any scoring, so that a run
    with -h 1 finds out at start-up, not at its first eval."""
    for ex in examples:
        ids = ex.context + [t for c in ex.completions for t in c]
        if max(ids) >= vocab_size:
            raise ValueError(f"{source}: example {ex.index}: token id {max(ids)} is outside the model's "
                             f"vocabulary of {vocab_size} (a file tokenized for another model?)")
        longest = max(len(c) for c in ex.completions)
        if longest + 1 > max_len:
            raise ValueError(f"{source}: example {ex.index}: a completion of {longest} tokens does not fit the "
                             f"model's maxT {max_len} (with one token of context)")


def _rows(example, max_len):
    """(tokens, first, last) per completion: context + completion (the context cut from the left to
    fit max_len; check_examples has made sure each fits), and the range [first, last) of positions
    whose targets are the completion."""
    out = []
    for comp in example.completions:
        context = example.context[-(max_len - len(comp)):]
        out.append((context + comp, len(context) - 1, len(context) + len(comp) - 1))
    return out


def examples_per_batch(examples, rows_per_batch):
    """Whole examples a forward takes: as many as fit `rows_per_batch` rows (a row a completion), at least one."""
    return max(1, rows_per_batch // max(1, max((len(ex.completions) for ex in examples), default=1)))


def batch_rows(examples, rows_per_batch):
    """The most rows a forward of evaluate() takes: its examples' completions, at most."""
    return examples_per_batch(examples, rows_per_batch) * max((len(ex.completions) for ex in examples), default=1)


def longest_row(examples, max_len):
    """The longest row of these examples: context + completion, the context cut to fit max_len."""
    return max((len(tokens) for ex in examples for tokens, _, _ in _rows(ex, max_len)), default=1)


def completion_losses(model, examples):
    """[[mean loss of each completion] per example]: one forward of all the rows of these examples."""
    cfg = model.config
    rows = [r for ex in examples for r in _rows(ex, cfg.max_seq_len)]
    T = max(len(tokens) for tokens, _, _ in rows)
    inputs = np.zeros((len(rows), T), np.int32)
    targets = np.zeros((len(rows), T), np.int32)
    for r, (tokens, _, _) in enumerate(rows):
        inputs[r, :len(tokens)] = tokens
        targets[r, :len(tokens) - 1] = tokens[1:]
    model.forward(inputs, targets)
    losses = np.asarray(model.backend.to_host(model.acts["losses"]), dtype=np.float64).reshape(len(rows), T)
    means = [losses[r, first:last].mean() for r, (_, first, last) in enumerate(rows)]
    out, r = [], 0
    for ex in examples:
        out.append(means[r:r + len(ex.completions)])
        r += len(ex.completions)
    return out


def evaluate(model, examples, world=None, rows_per_batch=32, progress=None, source="the eval file"):
    """(right answers over all ranks, number of examples) of acc_norm on `examples`. This rank scores
    its block; `world` (numbagpt.dist.World) sums the counts; progress(done, total) is called per batch.
    `source` names the file the examples came from, in the messages."""
    if not examples:
        raise ValueError(f"{source}: no examples to evaluate")
    rank, size = (world.rank, world.size) if world is not None else (0, 1)
    start, end = rank_range(len(examples), rank, size)
    check_examples(examples, model.config.vocab_size, model.config.max_seq_len, source)   # every rank alike
    mine = examples[start:end]
    per_batch = examples_per_batch(mine, rows_per_batch)
    correct = 0
    for i in range(0, len(mine), per_batch):
        batch = mine[i:i + per_batch]
        for ex, losses in zip(batch, completion_losses(model, batch)):
            correct += int(np.argmin(losses)) == ex.label  # argmin: the first lowest, as llm.c
        if progress:
            progress(min(i + per_batch, len(mine)), len(mine))
    if world is not None:
        correct = world.sum(correct)
    return int(correct), len(examples)
