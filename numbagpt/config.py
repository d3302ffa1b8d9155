"""GPT-2 model configurations: llm.c's model descriptors, custom shapes, and the padded vocabulary."""
import os
import re
from dataclasses import dataclass

GPT2_VOCAB = 50257


def pad_vocab(V, multiple=128):
    """V rounded up to a multiple of `multiple`: llm.c pads wte so the logits matmul has friendly shapes."""
    return ((V + multiple - 1) // multiple) * multiple


@dataclass(frozen=True)
class GPT2Config:
    max_seq_len: int        # maxT
    vocab_size: int         # V
    num_layers: int         # L
    num_heads: int          # NH
    channels: int           # C
    padded_vocab_size: int = 0  # Vp; 0 means pad_vocab(V)

    def __post_init__(self):
        if self.padded_vocab_size == 0:
            object.__setattr__(self, "padded_vocab_size", pad_vocab(self.vocab_size))
        for name in ("max_seq_len", "vocab_size", "num_layers", "num_heads", "channels"):
            if getattr(self, name) <= 0:
                raise ValueError(f"GPT2Config: {name} must be positive, got {getattr(self, name)}")
        if self.channels % self.num_heads:
            raise ValueError(f"GPT2Config: channels {self.channels} not divisible by num_heads {self.num_heads}")
        if self.padded_vocab_size < self.vocab_size:
            raise ValueError(f"GPT2Config: padded_vocab_size {self.padded_vocab_size} < vocab_size {self.vocab_size}")

    def describe(self):
        return (f"L={self.num_layers} NH={self.num_heads} C={self.channels} maxT={self.max_seq_len} "
                f"V={self.vocab_size} Vp={self.padded_vocab_size}")


# llm.c's GPT-2 depth descriptors dN (also written gpt2:dN): depth -> (C, NH), maxT 1024.
GPT2_DEPTHS = {6: (384, 6), 12: (768, 12), 24: (1024, 16), 36: (1280, 20), 48: (1600, 25),
               60: (1920, 30), 72: (2880, 30), 84: (3456, 36)}
# llm.c's GPT-3 descriptors gpt3:cN: channels -> (L, head size), maxT 2048. c5140 (GPT-3 13B's width as
# the GPT-3 paper prints it) is not whole heads of 128: llm.c stops on its assert, numbagpt says so.
GPT3_CHANNELS = {384: (6, 64), 768: (12, 64), 1024: (24, 64), 1536: (24, 96), 2048: (24, 128),
                 2560: (32, 80), 4096: (32, 128), 5140: (40, 128), 12288: (96, 128)}

# (L, NH, C, maxT). tiny is the 7.3M model of from-scratch reference runs; dN are llm.c's depths.
PRESETS = {"tiny": (4, 4, 128, 256)}
PRESETS.update({f"d{L}": (L, NH, C, 1024) for L, (C, NH) in GPT2_DEPTHS.items()})

# the widths that are models: whole heads
GPT3_WIDTHS = ", ".join(f"c{c}" for c, (_, hs) in GPT3_CHANNELS.items() if c % hs == 0)
DESCRIPTOR_HELP = ("tiny, dN (llm.c's GPT-2 depths: " + ", ".join(f"d{d}" for d in GPT2_DEPTHS) +
                   "; also gpt2:dN) or gpt3:cN (" + GPT3_WIDTHS + ")")


def descriptor_shape(name):
    """(L, NH, C, maxT) of a model descriptor, as llm.c's gpt_build_from_descriptor reads it."""
    if name in PRESETS:
        return PRESETS[name]
    m = re.fullmatch(r"(?:gpt2:)?d(\d+)", name)
    if m:
        depth = int(m.group(1))
        if f"d{depth}" in PRESETS:
            return PRESETS[f"d{depth}"]
        raise ValueError(f"unsupported GPT-2 depth d{depth}; llm.c's depths are "
                         f"{', '.join(f'd{d}' for d in GPT2_DEPTHS)} (train_gpt2 reshapes one with --layers/--heads/"
                         f"--channels)")
    m = re.fullmatch(r"gpt3:c(\d+)", name)
    if m:
        C = int(m.group(1))
        if C not in GPT3_CHANNELS:
            raise ValueError(f"unsupported GPT-3 channels c{C}; choose one of {GPT3_WIDTHS}")
        L, head_size = GPT3_CHANNELS[C]
        if C % head_size:
            raise ValueError(f"gpt3:c{C}: {C} channels are not whole heads of {head_size} (llm.c's table has it "
                             f"and stops on its assert); its shape with whole heads: -e gpt3:c4096 --layers {L} "
                             f"--heads {C // head_size} --channels {C // head_size * head_size}")
        return L, C // head_size, C, 2048
    raise ValueError(f"unknown model {name!r}: neither a model file nor a descriptor ({DESCRIPTOR_HELP})")


def is_descriptor(name):
    """True when -e names a descriptor rather than a model file or a run directory (llm.c: a file
    ends in .bin)."""
    return not name.endswith(".bin") and not os.path.exists(name)


def preset(name, vocab_size=GPT2_VOCAB):
    """The config of a model descriptor by name, for a vocabulary of `vocab_size` tokens."""
    L, NH, C, maxT = descriptor_shape(name)
    return GPT2Config(max_seq_len=maxT, vocab_size=vocab_size, num_layers=L, num_heads=NH, channels=C)


# bin/train_gpt2's shape flags: (TrainConfig field, GPT2Config field); the flag is --<field with dashes>
SHAPE_FLAGS = (("layers", "num_layers"), ("heads", "num_heads"), ("channels", "channels"),
               ("max_seq_len", "max_seq_len"))


def build_config(descriptor="tiny", vocab_size=GPT2_VOCAB, layers=None, heads=None, channels=None,
                 max_seq_len=None):
    """A descriptor's shape with any of --layers L, --heads NH, --channels C, --max-seq-len maxT over
    it, for `vocab_size` tokens (Vp padded to a multiple of 128 as llm.c). Errors name the flags."""
    L, NH, C, maxT = descriptor_shape(descriptor)
    given = dict(layers=layers, heads=heads, channels=channels, max_seq_len=max_seq_len)
    for flag, value in given.items():
        if value is not None and value <= 0:
            raise ValueError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    L = layers or L
    NH = heads or NH
    C = channels or C
    maxT = max_seq_len or maxT
    if C % NH:
        src = "--channels" if channels else f"-e {descriptor}"
        raise ValueError(f"channels C={C} ({src}) is not divisible by heads NH={NH} "
                         f"({'--heads' if heads else f'-e {descriptor}'})")
    if vocab_size <= 0:
        raise ValueError(f"vocabulary size must be positive, got {vocab_size}")
    return GPT2Config(max_seq_len=maxT, vocab_size=vocab_size, num_layers=L, num_heads=NH, channels=C)
