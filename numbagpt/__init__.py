"""numbagpt: GPT-2 training in Python with Numba, llm.c's kernels on the CPU and on CUDA.

Dimension legend used throughout (as in llm.c's train_gpt2.c):
    B   batch size                 T   sequence length (<= maxT)
    C   channels (n_embd)          NH  attention heads, C % NH == 0, hs = C / NH
    L   transformer layers         V   vocabulary size (50257 for GPT-2)
    Vp  V padded up to a multiple of 128 (50304 for GPT-2), the width of wte and the logits
    maxT  maximum sequence length (rows of wpe)
"""
__version__ = "0.1.0"
