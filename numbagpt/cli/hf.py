"""bin/export_hf and bin/import_hf: a numbagpt (llm.c) model file to and from a Hugging Face GPT-2 directory."""
import argparse

from numbagpt.cli import Parser, run_command
from numbagpt.files.formats import SAVE_PRECISIONS

EXPORT_DESCRIPTION = """\
Write a Hugging Face transformers GPT-2 directory from an llm.c/numbagpt model file: model.safetensors
(the padded vocabulary rows dropped, weights in transformers' Conv1D orientation), config.json and,
for GPT-2's 50257-token vocabulary, the tokenizer files. Load it, offline, with
    transformers.GPT2LMHeadModel.from_pretrained(OUT_DIR), transformers.AutoTokenizer.from_pretrained(OUT_DIR)"""

IMPORT_DESCRIPTION = """\
Write an llm.c/numbagpt model file (float32, or bfloat16 with --save-precision bf16) from a Hugging
Face transformers GPT-2 directory (config.json + model.safetensors, or a sharded save's
model.safetensors.index.json and shards; float32, float16 or bfloat16 tensors; e.g. one written by
save_pretrained or by export_hf), to sample from it or fine-tune it: bin/train_gpt2 -e MODEL_BIN ..."""


EXPORT_ARGS = [("model", "MODEL_BIN", "llm.c model file (float32 or bfloat16), or a train_gpt2 output directory "
                                      "(its newest model_*.bin: the final model, else the latest checkpoint's)"),
               ("out_dir", "OUT_DIR", "directory to write (created if needed)")]
IMPORT_ARGS = [("hf_dir", "DIR", "Hugging Face GPT-2 directory (config.json, model.safetensors or its shards)"),
               ("model", "MODEL_BIN", "llm.c model file to write")]


def _parser(prog, description, positionals):
    p = Parser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    for dest, metavar, help in positionals:
        p.add_argument(dest, metavar=metavar, help=help)
    return p


def build_export_parser():
    p = _parser("export_hf", EXPORT_DESCRIPTION, EXPORT_ARGS)
    p.add_argument("--force", action="store_true",
                   help="export into a directory that holds files (an earlier export): its files are "
                        "replaced, and tokenizer files this model does not have are removed")
    return p


def build_import_parser():
    p = _parser("import_hf", IMPORT_DESCRIPTION, IMPORT_ARGS)
    p.add_argument("--save-precision", choices=tuple(SAVE_PRECISIONS), default="fp32",
                   help="fp32: llm.c version 3; bf16: version 5, the weights rounded to bfloat16 (what "
                        "llm.c's CUDA trainer reads by default) (default: fp32)")
    p.add_argument("--force", action="store_true", help="replace MODEL_BIN if it exists")
    return p


def _command(prog, parser, argv, run):
    """Parse argv and print run(args); a bad input is one line, exit 1 (run_command)."""
    args = parser.parse_args(argv)
    return run_command(prog, lambda a: print(run(a)) or 0, args)


def export_main(argv=None):
    def run(args):
        from ..files.hf import export_hf
        from ..train.checkpoint import resolve_model
        model = resolve_model(args.model, "MODEL_BIN")
        files = export_hf(model, args.out_dir, force=args.force)
        return f"wrote {args.out_dir} from {model}: {', '.join(files)}"
    return _command("export_hf", build_export_parser(), argv, run)


def import_main(argv=None):
    def run(args):
        from ..files.hf import import_hf
        cfg = import_hf(args.hf_dir, args.model, args.save_precision, force=args.force)
        return f"wrote {args.model} ({args.save_precision}): {cfg.describe()}"
    return _command("import_hf", build_import_parser(), argv, run)
