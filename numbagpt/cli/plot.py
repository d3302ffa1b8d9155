"""bin/plot_log: loss curves of one or more training runs (their llm.c-format main.log) as a picture."""
import sys

from numbagpt.cli import add_flag, check_flags, Parser
from numbagpt.flags import POSITIVE


def build_parser():
    p = Parser(
        prog="plot_log",
        description="Plot train and val loss against step (and HellaSwag accuracy, when logged) from the "
                    "main.log files of one or more train_gpt2 / llm.c runs, overlaid with a legend. "
                    "Needs matplotlib (pip install matplotlib).")
    p.add_argument("logs", nargs="+", metavar="LOG", help="log files (e.g. out/main.log)")
    p.add_argument("-o", "--output", default="loss.png",
                   help="picture to write, in the format its extension names: .png, .pdf, .svg, ... "
                        "(default: %(default)s)")
    p.add_argument("--labels", default=None,
                   help="comma-separated legend names, one per log (default: the directory of a main.log, else the "
                        "file's name)")
    add_flag(p, "--tokens-per-step", type=int, check=POSITIVE, default=None,
                   help="tokens per training step (train_gpt2's tokens/step: -d, else B*T*processes), for a "
                        "second x axis in tokens")
    p.add_argument("--title", default=None, help="title of the loss panel")
    return p


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    check_flags("plot_log", parser, args)
    labels = args.labels.split(",") if args.labels else None
    if labels is not None and len(labels) != len(args.logs):
        print(f"{parser.prog}: error: --labels has {len(labels)} names for {len(args.logs)} logs", file=sys.stderr)
        return 1
    try:
        from ..plot import plot_logs
        notes = []
        plot_logs(args.logs, args.output, labels=labels, tokens_per_step=args.tokens_per_step, title=args.title,
                  notes=notes)
        for note in notes:
            print(f"{parser.prog}: note: {note}", file=sys.stderr)
    except BrokenPipeError:   # the reader left (`| head`): launch() ends the process quietly
        raise
    except (ValueError, OSError, RuntimeError) as e:
        print(f"{parser.prog}: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
