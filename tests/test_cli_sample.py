"""bin/sample_gpt2: prompts, samples, the cache against the full recompute, finding the model and the
tokenizer, one-line errors."""

import pytest

from numbagpt.cli.sample import main
from numbagpt.config import GPT2Config
from numbagpt.model import GPT2
from numbagpt.files.tokenizer import CharTokenizer, GPT2Tokenizer


def make_model(path, V, seed=0, max_seq_len=16):
    cfg = GPT2Config(max_seq_len=max_seq_len, vocab_size=V, num_layers=1, num_heads=2, channels=16)
    model = GPT2(cfg)
    model.init_weights(seed)
    model.load_parameters(model.parameters_host() * 10)
    model.save(path)
    return model


@pytest.fixture(scope="module")
def gpt2_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("gpt2")
    make_model(d / "model_00000010.bin", 50257)
    return d


def run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_prompt_samples_and_cache_equals_recompute(gpt2_model, capsys):
    args = ["-e", gpt2_model / "model_00000010.bin", "--prompt", "O Romeo", "-g", 20, "-n", 2, "--top-k", 40]
    rc, out, err = run(capsys, *args)
    assert rc == 0, err
    assert out.startswith("--- sample 1/2 ---\nO Romeo") and "\n--- sample 2/2 ---\nO Romeo" in out
    assert "40 tokens in" in err and "KV cache" in err
    # the continuation is 20 GPT-2 tokens; the same seed gives the same text without the cache
    first = out.split("--- sample 2/2 ---")[0].split("\n", 1)[1].rstrip("\n")
    assert len(GPT2Tokenizer().encode(first)) >= 20
    rc, out2, err = run(capsys, *args, "--no-cache")
    assert rc == 0 and out2 == out and "no cache" in err
    # a directory: its newest model file; a prompt file
    prompt = gpt2_model / "prompt.txt"
    prompt.write_text("O Romeo", encoding="utf-8")
    rc, out3, _ = run(capsys, "-e", gpt2_model, "--prompt-file", prompt, "-g", 20, "-n", 2, "--top-k", 40)
    assert rc == 0 and out3 == out


def test_char_model_finds_its_tokenizer_next_to_it(tmp_path, capsys):
    tok = CharTokenizer.from_text("abcdefgh \n")
    make_model(tmp_path / "m.bin", tok.vocab_size)
    tok.save(str(tmp_path / "data_tokenizer.bin"))
    rc, out, err = run(capsys, "-e", tmp_path / "m.bin", "--prompt", "abc", "-g", 30, "--temperature", 0)
    assert rc == 0, err
    body = out[3:-1].replace("<|endoftext|>", "#")  # 30 tokens of one character each (EOT as #)
    assert out.startswith("abc") and len(body) == 30 and set(body) <= set("abcdefgh \n#")
    assert "tokenizer char" in err
    # a prompt with a character the vocabulary lacks: the flag and the tokenizer named
    (tmp_path / "p.txt").write_text("abz", encoding="utf-8")
    for flags, flag in ((["--prompt", "abz"], "--prompt"), (["--prompt-file", tmp_path / "p.txt"],
                                                              f"--prompt-file {tmp_path / 'p.txt'}")):
        rc, out, err = run(capsys, "-e", tmp_path / "m.bin", *flags)
        assert (rc, out) == (1, "") and err == (f"sample_gpt2: error: {flag}: character 'z' is not in this character "
                                                f"vocabulary (10 characters) (tokenizer char)\n"), err


def test_a_prompt_that_fills_the_context_is_cut_saying_so(gpt2_model, capsys):
    """maxT = 16: a 40-token prompt is seen as its last 8 tokens (as a full context restarts), and a note
    says so; a short one gets no note."""
    rc, out, err = run(capsys, "-e", gpt2_model, "--prompt", " word" * 40, "-g", 2)
    assert rc == 0 and "note: the prompt's 40 tokens fill the model's context (maxT=16): it sees the last 8" in err
    rc, out, err = run(capsys, "-e", gpt2_model, "--prompt", " word" * 3, "-g", 2)
    assert rc == 0 and "note:" not in err


def test_a_reader_that_leaves_ends_the_sample_quietly(gpt2_model, tmp_path):
    """`sample_gpt2 ... | head -c 20`: no 'error: [Errno 32] Broken pipe' line, status 141 as a Unix
    tool's killed by SIGPIPE."""
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cmd = (f"{sys.executable} {os.path.join(root, 'bin', 'sample_gpt2')} -e {gpt2_model} -g 400 --omp-threads 1 "
           f"2> {tmp_path / 'err'} | head -c 20; s=${{PIPESTATUS[0]}}; echo; echo $s")
    proc = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert proc.stdout.splitlines()[-1] == "141", proc.stdout
    assert "error" not in (tmp_path / "err").read_text() and "Traceback" not in (tmp_path / "err").read_text()


def test_errors_are_one_line(tmp_path, gpt2_model, capsys):
    rc, _, err = run(capsys, "-e", tmp_path / "nope.bin")
    assert rc == 1
    assert err.strip() == f"sample_gpt2: error: {tmp_path / 'nope.bin'}: no such model file or directory (-e)"
    rc, _, err = run(capsys, "-e", tmp_path)
    assert rc == 1 and "no model_*.bin" in err
    make_model(tmp_path / "m.bin", 30)
    rc, _, err = run(capsys, "-e", tmp_path / "m.bin")
    assert rc == 1 and "no tokenizer for a 30-token vocabulary" in err and "--tokenizer" in err
    CharTokenizer.from_text("abc").save(str(tmp_path / "t.bin"))
    rc, _, err = run(capsys, "-e", tmp_path / "m.bin", "--tokenizer", tmp_path / "t.bin")
    assert rc == 1 and "a 4-token tokenizer, the model has 30 tokens" in err
    with pytest.raises(SystemExit, match="--top-p must be in"):
        main(["-e", str(gpt2_model), "--top-p", "1.5"])
    with pytest.raises(SystemExit, match="not both"):
        main(["-e", str(gpt2_model), "--prompt", "a", "--prompt-file", "b"])
    rc, _, err = run(capsys, "-e", gpt2_model, "--prompt-file", tmp_path / "missing.txt")
    assert rc == 1 and "missing.txt: cannot read the prompt" in err


@pytest.mark.parametrize("cache", [True, False])
def test_a_model_that_does_not_fit_is_refused_before_it_is_read(gpt2_model, capsys, monkeypatch, cache):
    """sample_gpt2 checks the memory that sampling takes (generate.sampling_bytes) as train_gpt2 does,
    before reading the parameters; --no-memory-check overrides it."""
    from numbagpt.files.formats import read_model_header
    from numbagpt.generate import sampling_bytes
    from numbagpt.memory import format_bytes
    path = gpt2_model / "model_00000010.bin"
    need = sampling_bytes(read_model_header(path)[0], cache)
    flags = () if cache else ("--no-cache",)
    monkeypatch.setenv("NUMBAGPT_MEMORY_LIMIT", str(need - 1))
    rc, out, err = run(capsys, "-e", path, "-g", 2, *flags)
    assert rc == 1 and out == ""
    assert err == (f"sample_gpt2: error: not enough memory for sampling {path}: it needs {format_bytes(need)}, "
                   f"{format_bytes(need - 1)} is available ($NUMBAGPT_MEMORY_LIMIT); use a smaller model or a "
                   f"machine with more memory; --no-memory-check to try anyway\n")
    assert run(capsys, "-e", path, "-g", 2, "--no-memory-check", *flags)[0] == 0
    monkeypatch.setenv("NUMBAGPT_MEMORY_LIMIT", str(need))
    assert run(capsys, "-e", path, "-g", 2, *flags)[0] == 0


def test_characters_split_over_tokens_are_printed_whole(tmp_path, capsys):
    # "é" is the two tokens b"\xc3" + b"\xa9": the stream decodes bytes across tokens, as the whole
    # text decodes (api.sample: every new token decoded at once), not token by token ("\ufffd\ufffd")
    from numbagpt import api
    from numbagpt.files.formats import write_tokenizer_file
    tok = tmp_path / "tok.bin"
    write_tokenizer_file(tok, [b"\xc3", b"\xa9", b"<|endoftext|>"], 2)
    model = make_model(tmp_path / "m.bin", 3)
    rc, out, err = run(capsys, "-e", tmp_path / "m.bin", "--tokenizer", tok, "-g", 40, "--seed", 5,
                       "--temperature", 50)   # about even odds: both tokens, in turns
    assert rc == 0, err
    want = api.sample(model, "", 40, tokenizer=str(tok), seed=5, temperature=50)
    assert "é" in want and out == want + "\n"


@pytest.mark.parametrize("cache", [[], ["--no-cache"]])
def test_every_kernel_runs_before_the_sample_starts_and_the_compile_notice_is_on_stderr(tmp_path, capsys,
                                                                                       monkeypatch, cache):
    """A cold cache compiles a kernel at its first call: every kernel the sample calls has run before
    anything is on stdout (the tiled matmul of the prefill after the context slides too: 48 tokens
    from a model of maxT 32), so that the compile notice (stderr, from a thread) does not land inside
    the sample's text on a terminal."""
    import contextlib

    import numbagpt.compiling
    from numbagpt import cpu
    from numbagpt.backend import KERNELS
    make_model(tmp_path / "m.bin", 50257, max_seq_len=32)
    written, calls = [], []   # the stdout so far; (kernel, whether stdout had text when it was called)

    def recorded(name, kernel):
        def call(*args):
            written.append(capsys.readouterr())
            calls.append((name, any(out for out, _ in written)))
            return kernel(*args)
        return call
    for name in KERNELS:
        monkeypatch.setattr(cpu, name, recorded(name, getattr(cpu, name)))

    @contextlib.contextmanager
    def notice(say, after=3.0):
        say("compiling")
        yield
    monkeypatch.setattr(numbagpt.compiling, "compile_notice", notice)
    rc, out, err = run(capsys, "-e", tmp_path / "m.bin", "--prompt", "O Romeo", "-g", 45, *cache)
    assert rc == 0, err
    before = {name for name, started in calls if not started}
    after = {name for name, started in calls if started}
    assert after and after <= before, after - before
    if not cache:
        assert {"matmul_forward", "matvec_forward", "attention_forward_cached"} <= after
    err = "".join(e for _, e in written) + err
    assert err.startswith("sample_gpt2: compiling\nmodel "), err


def test_a_sample_that_ends_inside_a_character_ends_in_one_replacement_character():
    """The bytes of a character cut off by the end of the sample (2 of the euro sign's 3): one U+FFFD,
    then the newline; the whole character when its last byte comes."""
    import io

    from numbagpt.cli.sample import write_sample

    class Tokens:
        def decode_bytes(self, ids):
            return b"".join([b"\xe2", b"\x82", b"\xac"][i] for i in ids)
    for ids, text in (([0, 1], "x\ufffd\n"), ([0, 1, 2], "x\u20ac\n")):
        out = io.StringIO()
        assert write_sample(out, "x", ids, Tokens()) == len(ids)
        assert out.getvalue() == text


def test_samples_follow_one_another_from_one_seed(gpt2_model, capsys):
    """-n 2 draws the second sample after the first from the one seeded generator: not the first
    again, and the first is what -n 1 gives."""
    args = ["-e", gpt2_model, "--prompt", "O Romeo", "-g", 12, "--temperature", 2]
    rc, one, err = run(capsys, *args)
    assert rc == 0, err
    rc, two, err = run(capsys, *args, "-n", 2)
    assert rc == 0, err
    first, second = (part.split("\n", 1)[1].rstrip("\n") for part in two.split("--- sample ")[1:])
    assert first == one.rstrip("\n") and second != first
