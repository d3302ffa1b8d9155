"""GPT-2 model configurations: the presets and the padded vocabulary."""
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


# (L, NH, C, maxT). tiny is the 7.3M model of from-scratch reference runs; dNN are the GPT-2 sizes.
PRESETS = {
    "tiny": (4, 4, 128, 256),
    "d12": (12, 12, 768, 1024),
    "d24": (24, 16, 1024, 1024),
    "d36": (36, 20, 1280, 1024),
    "d48": (48, 25, 1600, 1024),
}


def preset(name, vocab_size=GPT2_VOCAB):
    """The config of a preset by name, for a vocabulary of `vocab_size` tokens."""
    if name not in PRESETS:
        raise ValueError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)} or a .bin file")
    L, NH, C, maxT = PRESETS[name]
    return GPT2Config(max_seq_len=maxT, vocab_size=vocab_size, num_layers=L, num_heads=NH, channels=C)
