"""bin/export_hf and bin/import_hf: a numbagpt (llm.c) model file to and from a Hugging Face GPT-2 directory."""
import argparse
import sys

EXPORT_DESCRIPTION = """\
Write a Hugging Face transformers GPT-2 directory from an llm.c/numbagpt model file: model.safetensors
(the padded vocabulary rows dropped, weights in transformers' Conv1D orientation), config.json and,
for GPT-2's 50257-token vocabulary, the tokenizer files. Load it, offline, with
    transformers.GPT2LMHeadModel.from_pretrained(OUT_DIR), transformers.AutoTokenizer.from_pretrained(OUT_DIR)"""

IMPORT_DESCRIPTION = """\
Write an llm.c/numbagpt float32 model file from a Hugging Face transformers GPT-2 directory
(config.json + model.safetensors, e.g. one written by save_pretrained or by export_hf), to sample from
it or fine-tune it: bin/train_gpt2 -e MODEL_BIN ..."""


def _run(prog, fn):
    try:
        return fn()
    except (ValueError, OSError, RuntimeError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 1


def export_main(argv=None):
    p = argparse.ArgumentParser(prog="export_hf", description=EXPORT_DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL_BIN", help="llm.c model file (float32 or bfloat16)")
    p.add_argument("out_dir", metavar="OUT_DIR", help="directory to write (created if needed)")
    args = p.parse_args(argv)

    def run():
        from ..hf import export_hf
        files = export_hf(args.model, args.out_dir)
        print(f"wrote {args.out_dir}: {', '.join(files)}")
        return 0
    return _run("export_hf", run)


def import_main(argv=None):
    p = argparse.ArgumentParser(prog="import_hf", description=IMPORT_DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("hf_dir", metavar="DIR", help="Hugging Face GPT-2 directory (config.json, model.safetensors)")
    p.add_argument("model", metavar="MODEL_BIN", help="llm.c model file to write")
    args = p.parse_args(argv)

    def run():
        from ..hf import import_hf
        cfg = import_hf(args.hf_dir, args.model)
        print(f"wrote {args.model}: {cfg.describe()}")
        return 0
    return _run("import_hf", run)
