"""Checks of dev/pytorch_reference.py, the independent PyTorch GPT-2 behind tests/fixtures/micro_*.

(a) its files parse with the plain NumPy reader below (headers, exact sizes, internal consistency);
(b) its gradients match central finite differences of its own loss in float64;
(c) the committed step losses decrease;
(d) regenerating the micro fixture reproduces the committed bytes (exactly, on the kind of machine
    that made them; to a tolerance elsewhere, since BLAS and ATen kernels round differently per CPU).

Run `python tests/test_reference_dumper.py` to regenerate the fixtures and micro_origin.json.
"""
import hashlib
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEV = os.path.join(ROOT, "dev")
FIXTURES = os.path.join(ROOT, "tests", "fixtures")
if DEV not in sys.path:
    sys.path.insert(0, DEV)
import pytorch_reference as ref  # noqa: E402

# The micro fixture (keep in step with tests/fixtures/README.md).
MICRO = dict(maxT=16, V=97, L=2, NH=2, C=32, Vp=128, B=2, T=11, seed=1337, steps=10)
MICRO_ARGS = ["-L", "2", "--heads", "2", "--channels", "32", "--max-seq-len", "16", "--vocab", "97",
              "-B", "2", "-T", "11", "--seed", "1337", "--steps", "10", "--threads", "1", "--name", "micro"]
FILES = ("micro_model.bin", "micro_debug_state.bin", "micro_losses.txt")


# ---------------------------------------------------------------------------------------------
# a plain NumPy reader, written from docs/formats.md and independent of the dumper

def shapes(maxT, V, L, NH, C, Vp):
    return [("wte", (Vp, C)), ("wpe", (maxT, C)), ("ln1w", (L, C)), ("ln1b", (L, C)),
            ("qkvw", (L, 3 * C, C)), ("qkvb", (L, 3 * C)), ("attprojw", (L, C, C)), ("attprojb", (L, C)),
            ("ln2w", (L, C)), ("ln2b", (L, C)), ("fcw", (L, 4 * C, C)), ("fcb", (L, 4 * C)),
            ("fcprojw", (L, C, 4 * C)), ("fcprojb", (L, C)), ("lnfw", (C,)), ("lnfb", (C,))]


def split(flat, shape_list):
    out, offset = {}, 0
    for name, shape in shape_list:
        n = math.prod(shape)
        out[name] = flat[offset:offset + n].reshape(shape)
        offset += n
    assert offset == flat.size, f"{flat.size - offset} trailing values"
    return out


def read_model(path):
    raw = open(path, "rb").read()
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert header[0] == 20240326 and header[1] == 3
    assert not header[8:].any(), "unused header slots must be 0"
    dims = tuple(int(v) for v in header[2:8])  # maxT, V, L, NH, C, Vp
    sl = shapes(*dims)
    assert len(raw) == 1024 + 4 * sum(math.prod(s) for _, s in sl)
    return dims, split(np.frombuffer(raw[1024:], dtype="<f4"), sl)


def read_state(path, dims):
    raw = open(path, "rb").read()
    header = np.frombuffer(raw[:1024], dtype="<i4")
    assert header[0] == 20240327 and header[1] == 2
    assert not header[4:].any(), "unused header slots must be 0"
    B, T = int(header[2]), int(header[3])
    maxT, V, L, NH, C, Vp = dims
    sl = shapes(*dims)
    assert len(raw) == 1024 + 4 * (2 * B * T + B * T * V + 1 + sum(math.prod(s) for _, s in sl))
    o = 1024
    x = np.frombuffer(raw, dtype="<i4", count=B * T, offset=o).reshape(B, T)
    o += 4 * B * T
    y = np.frombuffer(raw, dtype="<i4", count=B * T, offset=o).reshape(B, T)
    o += 4 * B * T
    logits = np.frombuffer(raw, dtype="<f4", count=B * T * V, offset=o).reshape(B, T, V)
    o += 4 * B * T * V
    loss = float(np.frombuffer(raw, dtype="<f4", count=1, offset=o)[0])
    o += 4
    grads = split(np.frombuffer(raw[o:], dtype="<f4"), sl)
    return (B, T), x, y, logits, loss, grads


def sha256(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def environment():
    """What decides the float32 rounding of the dumper: the torch build, ATen's kernel ISA, and the CPU
    (MKL picks its code path by vendor, family/model and instruction sets), plus env overrides."""
    cpu = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("vendor_id", "cpu family", "model", "flags") and key not in cpu:
                    cpu[key] = value.strip()
                if key == "flags":
                    break
    except OSError:
        pass
    flags = sorted(f for f in cpu.get("flags", "").split() if f.startswith(("avx", "amx", "fma")))
    env = {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "MKL_CBWR", "MKL_ENABLE_INSTRUCTIONS",
                                      "MKL_DEBUG_CPU_TYPE") if k in os.environ}
    return {"torch": torch.__version__, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu": f"{cpu.get('vendor_id', '?')} family {cpu.get('cpu family', '?')} model {cpu.get('model', '?')}",
            "cpu_flags": " ".join(flags), "env": env}


def generate(out_dir, extra=()):
    cmd = [sys.executable, os.path.join(DEV, "pytorch_reference.py"), *MICRO_ARGS, "--out-dir", out_dir, *extra]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)


# ---------------------------------------------------------------------------------------------
# (a) the committed files parse and hang together

def test_fixture_files_parse():
    dims, params = read_model(os.path.join(FIXTURES, "micro_model.bin"))
    m = MICRO
    assert dims == (m["maxT"], m["V"], m["L"], m["NH"], m["C"], m["Vp"])
    assert os.path.getsize(os.path.join(FIXTURES, "micro_model.bin")) == 1024 + 4 * 30080
    V, L = m["V"], m["L"]
    assert not params["wte"][V:].any(), "padded wte rows must be zero"
    assert np.all(params["ln1w"] == 1) and np.all(params["lnfw"] == 1) and not params["qkvb"].any()
    assert abs(params["qkvw"].std() - 0.02) < 0.002
    assert abs(params["attprojw"].std() - 0.02 / math.sqrt(2 * L)) < 0.002

    (B, T), x, y, logits, loss, grads = read_state(os.path.join(FIXTURES, "micro_debug_state.bin"), dims)
    assert (B, T) == (m["B"], m["T"])
    assert x.min() >= 0 and x.max() < V and y.min() >= 0 and y.max() < V
    tokens = np.concatenate([x.ravel(), y.ravel()[-1:]])      # y is x shifted by one token
    assert np.array_equal(y.ravel(), tokens[1:])
    assert not grads["wte"][V:].any(), "padded wte rows must get zero gradient"
    # the loss is the mean cross-entropy of the saved logits (float64 recomputation)
    lg = logits.astype(np.float64)
    lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
    ce = (lse - np.take_along_axis(lg, y[..., None].astype(np.int64), -1)[..., 0]).mean()
    assert abs(ce - loss) < 1e-5
    losses = np.loadtxt(os.path.join(FIXTURES, "micro_losses.txt"))
    assert losses.shape == (m["steps"],)
    assert abs(losses[0] - loss) < 1e-7


def test_fixture_matches_float64_recomputation():
    """The committed float32 state is within float32 rounding of the same model run in float64."""
    cfg, params = ref.read_model_file(os.path.join(FIXTURES, "micro_model.bin"))
    dims = (cfg.max_seq_len, cfg.vocab_size, cfg.num_layers, cfg.num_heads, cfg.channels, cfg.padded_vocab_size)
    _, x, y, logits, loss, grads = read_state(os.path.join(FIXTURES, "micro_debug_state.bin"), dims)
    out = ref.reference_run(cfg, params, x, y, steps=MICRO["steps"], dtype=torch.float64)
    assert np.abs(out["logits"] - logits).max() < 1e-5
    assert abs(out["loss"] - loss) < 1e-6
    for name in ref.PARAM_NAMES:
        assert np.abs(out["grads"][name] - grads[name]).max() < 1e-6, name
    losses = np.loadtxt(os.path.join(FIXTURES, "micro_losses.txt"))
    assert np.abs(np.array(out["losses"]) - losses).max() < 1e-5


# ---------------------------------------------------------------------------------------------
# (b) autograd gradients == finite differences of the loss, in float64

def test_gradients_match_finite_differences():
    cfg = ref.Config(max_seq_len=8, vocab_size=37, num_layers=2, num_heads=2, channels=16)  # Vp = 128
    params = ref.init_params(cfg, seed=7)
    gen = torch.Generator().manual_seed(11)
    for t in params.values():       # move off the special init point (ln 1/0, zero biases)
        t += 0.05 * torch.randn(t.shape, generator=gen, dtype=t.dtype)
    params["wte"][cfg.vocab_size:] = 0
    x, y = ref.random_batch(2, 7, cfg.vocab_size, seed=3)
    model = ref.GPT(cfg, params, dtype=torch.float64)
    xt, yt = torch.as_tensor(x, dtype=torch.long), torch.as_tensor(y, dtype=torch.long)
    _, loss = model(xt, yt)
    loss.backward()

    rng = np.random.default_rng(5)
    eps = 1e-5
    with torch.no_grad():
        for name, group in model.llmc_groups():
            for _ in range(3):
                p = group[rng.integers(len(group))]
                flat, gflat = p.view(-1), p.grad.view(-1)
                limit = cfg.vocab_size * cfg.channels if name == "wte" else flat.numel()
                i = rng.integers(limit)
                old = flat[i].item()
                flat[i] = old + eps
                lp = model(xt, yt)[1].item()
                flat[i] = old - eps
                lm = model(xt, yt)[1].item()
                flat[i] = old
                fd = (lp - lm) / (2 * eps)
                g = gflat[i].item()
                assert abs(fd - g) <= 1e-8 + 1e-6 * abs(g), f"{name}[{i}]: autograd {g}, finite diff {fd}"
        # padded wte rows: no effect on the loss, zero gradient
        assert not model.wte.grad[cfg.vocab_size:].any()
    # the stacked (model-file layout) gradients are the per-layer ones
    stacked = model.llmc_tensors(grad=True)
    assert [(n, stacked[n].shape) for n in ref.PARAM_NAMES] == ref.param_shapes(cfg)
    assert np.array_equal(stacked["fcw"][1], model.h[1].fcw.grad.numpy())


# ---------------------------------------------------------------------------------------------
# (c) the step losses decrease

def test_losses_decrease():
    losses = np.loadtxt(os.path.join(FIXTURES, "micro_losses.txt"))
    assert len(losses) == MICRO["steps"]
    assert np.all(np.diff(losses) < 0), losses
    assert losses[-1] < losses[0] - 0.05


# ---------------------------------------------------------------------------------------------
# (d) regenerating reproduces the committed bytes

@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    """The micro fixture regenerated by the README's command into a temp dir (made once per module)."""
    out = tmp_path_factory.mktemp("micro")
    generate(str(out))
    return out


def test_regenerate_reproduces_fixture(regenerated):
    tmp_path = regenerated
    origin = json.load(open(os.path.join(FIXTURES, "micro_origin.json")))
    for f in FILES:
        assert sha256(os.path.join(FIXTURES, f)) == origin["sha256"][f], f"committed {f} changed"
    if torch.backends.cpu.get_cpu_capability() == "DEFAULT":
        pytest.skip("torch's normal_ draws differently without AVX2, so the init weights differ")
    same_machine = environment() == origin["environment"]
    for f in FILES:
        if f == "micro_model.bin" or same_machine:
            assert sha256(tmp_path / f) == origin["sha256"][f], f"{f} regenerated differs ({environment()})"
    if same_machine:
        return
    # another torch build or CPU: float32 kernels round differently; the values must still agree closely
    dims = read_model(os.path.join(FIXTURES, "micro_model.bin"))[0]
    a = read_state(os.path.join(FIXTURES, "micro_debug_state.bin"), dims)
    b = read_state(str(tmp_path / "micro_debug_state.bin"), dims)
    assert a[0] == b[0] and np.array_equal(a[1], b[1]) and np.array_equal(a[2], b[2])
    assert np.abs(a[3] - b[3]).max() < 1e-5 and abs(a[4] - b[4]) < 1e-6
    for name in ref.PARAM_NAMES:
        assert np.abs(a[5][name] - b[5][name]).max() < 1e-6, name
    la, lb = np.loadtxt(os.path.join(FIXTURES, "micro_losses.txt")), np.loadtxt(tmp_path / "micro_losses.txt")
    assert np.abs(la - lb).max() < 1e-5
    pytest.skip(f"values agree to tolerance; exact bytes are only checked in the environment recorded "
                f"in micro_origin.json ({origin['environment']}), this is {environment()}")


def test_model_in_roundtrip(regenerated, tmp_path):
    """--model-in on a freshly made model file gives the same files as the fresh init (same machine)."""
    cmd = [sys.executable, os.path.join(DEV, "pytorch_reference.py"), "--model-in",
           str(regenerated / "micro_model.bin"), "-B", "2", "-T", "11", "--seed", "1337", "--threads", "1",
           "--out-dir", str(tmp_path / "b"), "--name", "micro"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=ROOT)
    for f in FILES:
        assert sha256(regenerated / f) == sha256(tmp_path / "b" / f), f


def test_shard_batch(tmp_path):
    tokens = np.arange(1000, 1100, dtype=np.uint16)
    header = np.zeros(256, dtype="<i4")
    header[:3] = [20240520, 1, tokens.size]
    path = tmp_path / "shard.bin"
    path.write_bytes(header.tobytes() + tokens.tobytes())
    x, y = ref.read_shard_batch(str(path), 3, 5, 50257)
    assert x.dtype == np.int32 and np.array_equal(x.ravel(), np.arange(1000, 1015))
    assert np.array_equal(y.ravel(), np.arange(1001, 1016))
    with pytest.raises(ValueError, match="token"):
        ref.read_shard_batch(str(path), 3, 5, 1010)
    path.write_bytes(header.tobytes() + tokens[:-1].tobytes())
    with pytest.raises(ValueError, match="bytes"):
        ref.read_shard_batch(str(path), 3, 5, 50257)


if __name__ == "__main__":
    generate(FIXTURES)
    origin = {"command": "python dev/pytorch_reference.py " + " ".join(MICRO_ARGS) + " --out-dir tests/fixtures",
              "environment": environment(),
              "sha256": {f: sha256(os.path.join(FIXTURES, f)) for f in FILES},
              "bytes": {f: os.path.getsize(os.path.join(FIXTURES, f)) for f in FILES}}
    with open(os.path.join(FIXTURES, "micro_origin.json"), "w") as f:
        json.dump(origin, f, indent=2)
        f.write("\n")
    print(json.dumps(origin, indent=2))
