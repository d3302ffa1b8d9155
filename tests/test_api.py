"""numbagpt.api refuses what the commands' flags refuse, with the one-line ValueError the command
prints (docs/api.md), before it does any work; sample() means what bin/sample_gpt2 means; import_hf
names the file and what is wrong with it."""
import os

import pytest

from numbagpt import api
from numbagpt.files.tokenizer import BytesTokenizer
from numbagpt.generate import prompt_ids



@pytest.fixture(scope="module")
def model():
    """A one-layer GPT-2 with GPT-2's vocabulary (so that prompts encode), seeded."""
    from numbagpt.config import GPT2Config
    m = api.GPT2(GPT2Config(max_seq_len=16, vocab_size=api.GPT2_VOCAB, num_layers=1, num_heads=2, channels=16))
    m.init_weights(0)
    return m


BAD_SAMPLES = [
    (dict(tokens=0), "-g must be positive, got 0"),
    (dict(tokens=-1), "-g must be positive, got -1"),
    (dict(tokens=2.5), "-g must be an integer, got 2.5"),
    (dict(temperature=-1.0), "--temperature must be >= 0, got -1.0"),
    (dict(temperature=float("nan")), "--temperature must be a finite number, got nan"),
    (dict(top_k=-3), "--top-k must be >= 0, got -3"),
    (dict(top_p=0.0), "--top-p must be in (0, 1], got 0.0"),
    (dict(top_p=2.0), "--top-p must be in (0, 1], got 2.0"),
    (dict(seed=-1), "--seed must be >= 0, got -1"),
    (dict(prompt=7), "--prompt must be a string, got 7"),
]


@pytest.mark.parametrize("kwargs, message", BAD_SAMPLES, ids=[m for _, m in BAD_SAMPLES])
def test_sample_refuses_what_sample_gpt2_refuses(model, kwargs, message):
    with pytest.raises(ValueError) as e:
        api.sample(model, **{"prompt": "", "tokens": 2, **kwargs})
    assert str(e.value) == message


def test_sample_top_k_0_and_none_prompt_mean_what_the_command_means(model):
    """--top-k 0 is "all ids" in bin/sample_gpt2, as top_k=None; no prompt starts from end-of-text."""
    want = api.sample(model, "", 4, seed=3)
    assert api.sample(model, "", 4, top_k=0, seed=3) == want
    assert api.sample(model, None, 4, seed=3) == want


def test_prompt_ids():
    tok = BytesTokenizer([b"a", b"b", b"<eot>"], eot_token=2)
    assert prompt_ids(tok, "") == [2]
    assert prompt_ids(BytesTokenizer([b"a"], eot_token=None), "") == [0]
    with pytest.raises(ValueError, match="can only decode: sample without a prompt"):
        prompt_ids(tok, "ab")


@pytest.mark.parametrize("call, message", [
    (lambda m: api.evaluate(m, "/nonexistent/hellaswag_val.bin", batch_size=0), "-b must be positive, got 0"),
    (lambda m: api.load_model("tiny", seed=-1), "--seed must be >= 0, got -1"),
    (lambda m: api.save_model(m, "unused.bin", precision="fp16"), "precision must be one of fp32, bf16, got 'fp16'"),
    (lambda m: api.load_model("tiny", precision="fp16"), "precision must be one of fp32, bf16, got 'fp16'"),
    (lambda m: api.load_model(None), "-e must be given"),
    (lambda m: api.sample(None, "Hi"), "model must be a GPT2 (load_model(...) makes one), got NoneType"),
    (lambda m: api.sample("out_api", "Hi"), "model must be a GPT2 (load_model(...) makes one), got str"),
    (lambda m: api.evaluate(None, "ev.bin"), "model must be a GPT2 (load_model(...) makes one), got NoneType"),
    (lambda m: api.evaluate(m, None), "eval_file must be given"),
    (lambda m: api.save_model(m, None), "path must be given"),
    (lambda m: api.load_model(123), "-e must be a string, got 123"),
    (lambda m: api.load_model("tiny", vocab_size=65.0), "vocab_size must be an integer, got 65.0"),
    (lambda m: api.load_model("tiny", recompute="1"), "recompute must be an integer, got '1'"),
    (lambda m: api.resolve_model(None), "-e must be given"),
    (lambda m: api.export_hf(None, "hf_out"), "model_bin must be given"),
    (lambda m: api.import_hf("hf_dir", None), "model_bin must be given"),
    (lambda m: api.import_hf("hf_dir", "m.bin", precision="bfloat16"),
     "precision must be one of fp32, bf16, got 'bfloat16'"),
    (lambda m: api.GPT2(None), "config must be a GPT2Config (numbagpt.config.preset makes one), got NoneType"),
    (lambda m: api.TrainConfig(heads=3, channels=16),
     "channels C=16 (--channels) is not divisible by heads NH=3 (--heads)"),
    (lambda m: api.TrainConfig(seq_len=64, max_seq_len=32),
     "-t/--seq-len 64 exceeds the model's max_seq_len 32 (--max-seq-len)"),
    # a wrong type or an empty path: one line naming the argument (they were tracebacks, and messages
    # that began with ": no such file")
    (lambda m: api.load_model("tiny", device=None), "--device must be given"),
    (lambda m: api.load_model("tiny", device=5), "--device must be a string, got 5"),
    (lambda m: api.sample(m, "A", 3, tokenizer=5), "tokenizer must be a string, got 5"),
    (lambda m: api.sample(m, "A", 3, model_file=5), "model_file must be a string, got 5"),
    (lambda m: api.train({"max_steps": 4}), "config must be a TrainConfig (TrainConfig(**fields) makes one), got dict"),
    (lambda m: api.load_model(""), "-e must be a path, got ''"),
    (lambda m: api.save_model(m, ""), "path must be a path, got ''"),
    (lambda m: api.evaluate(m, ""), "eval_file must be a path, got ''"),
    (lambda m: api.export_hf("", "hf_out"), "model_bin must be a path, got ''"),
])
def test_the_other_functions_check_their_arguments_first(model, call, message):
    with pytest.raises(ValueError) as e:
        call(model)
    assert str(e.value) == message


def test_sample_without_a_tokenizer_for_the_model_says_how_to_give_one():
    """The API's words, not the command's: tokenizer=, and no "next to ." where no model file was given."""
    from numbagpt.config import GPT2Config
    m = api.GPT2(GPT2Config(max_seq_len=8, vocab_size=17, num_layers=1, num_heads=1, channels=8))
    m.init_weights(0)
    with pytest.raises(ValueError) as e:
        api.sample(m, "", 2)
    assert str(e.value) == "no tokenizer for a 17-token vocabulary: pass tokenizer= FILE"


def test_paths_may_be_pathlib_paths(model, tmp_path):
    """load_model and TrainConfig take a pathlib.Path where a flag takes a path (load_model raised
    AttributeError: 'PosixPath' object has no attribute 'endswith'; TrainConfig refused it)."""
    from pathlib import Path
    api.save_model(model, tmp_path / "m.bin")
    assert api.load_model(Path(tmp_path / "m.bin")).num_parameters == model.num_parameters
    cfg = api.TrainConfig(output_dir=Path(tmp_path / "o"), model=Path(tmp_path / "m.bin"))
    assert cfg.output_dir == str(tmp_path / "o") and cfg.model == str(tmp_path / "m.bin")


def test_a_descriptor_is_built_from_the_seed_given_and_save_model_writes_the_precision_given(model, tmp_path):
    """load_model("tiny", seed=s) is the preset initialised from s (as train_gpt2 -e tiny --seed s);
    save_model(..., precision="bf16") writes llm.c's version 5, the parameters rounded to bfloat16
    (half the bytes of version 3), and "fp32" version 3 exactly."""
    import numpy as np

    from numbagpt.config import preset
    from numbagpt.files import formats
    seeded = api.GPT2(preset("tiny"))
    seeded.init_weights(7)
    loaded = api.load_model("tiny", seed=7)
    assert np.array_equal(loaded.parameters_host(), seeded.parameters_host())
    assert not np.array_equal(api.load_model("tiny").parameters_host(), seeded.parameters_host())
    for precision, version in (("fp32", 3), ("bf16", 5)):
        path = tmp_path / f"{precision}.bin"
        api.save_model(model, path, precision=precision)
        assert formats.read_model_header(str(path))[1] == version
        _, params = formats.read_model(str(path))
        want = model.parameters_host()
        if precision == "bf16":   # round to nearest even, as llm.c's writer
            bits = want.view(np.uint32).astype(np.uint64)
            want = (((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16).astype(np.uint32).view(np.float32)
        np.testing.assert_array_equal(params, want)
    assert (tmp_path / "bf16.bin").stat().st_size < 0.6 * (tmp_path / "fp32.bin").stat().st_size


def test_load_model_takes_the_precision_of_the_commands(model, tmp_path):
    """load_model(..., precision="bf16") is -e FILE --precision bf16: the same weights, bf16 matmuls
    (the loss of a batch as GPT2.from_file's in bf16, not as fp32's)."""
    import numpy as np
    path = str(tmp_path / "m.bin")
    api.save_model(model, path)
    tokens = np.arange(2 * 8, dtype=np.int32).reshape(2, 8) % 50
    losses = {}
    for name, m in (("api", api.load_model(path, precision="bf16")),
                    ("bf16", api.GPT2.from_file(path, precision="bf16")), ("fp32", api.GPT2.from_file(path))):
        losses[name] = m.forward(tokens, np.roll(tokens, -1, axis=1))
    assert losses["api"] == losses["bf16"] != losses["fp32"]


@pytest.mark.parametrize("flags, kwargs", [
    (["--seed", "11", "--top-k", "40", "--temperature", "0.8"], dict(seed=11, top_k=40, temperature=0.8)),
    (["--top-p", "0.05"], dict(top_p=0.05)),
    ([], {}),   # the defaults: the same seed, temperature, top-k and top-p
])
def test_sample_is_the_commands_sample(model, tmp_path, capsys, flags, kwargs):
    """api.sample and bin/sample_gpt2 give the same text for the same model, prompt and seed."""
    from numbagpt.cli import sample as cli
    path = str(tmp_path / "m.bin")
    api.save_model(model, path)
    want = api.sample(model, "To be", 6, **kwargs)
    assert cli.main(["-e", path, "--prompt", "To be", "-g", "6"] + flags) == 0
    assert capsys.readouterr().out == want + "\n"
    if kwargs.get("top_p"):   # a nucleus this small changes the text
        assert want != api.sample(model, "To be", 6)


def _config_json(**change):
    from numbagpt.config import GPT2Config
    from numbagpt.files import hf
    config = hf.hf_config(GPT2Config(max_seq_len=8, vocab_size=10, num_layers=1, num_heads=1, channels=4))
    return {**config, **change}


@pytest.mark.parametrize("config, message", [
    ("[1, 2]", "config.json: not a JSON object (a model's config), but a list"),
    (b"\xff\xfe\x00", "config.json: not valid JSON"),
    (_config_json(n_embd="x"), "config.json: n_embd must be a positive integer, got 'x'"),
    (_config_json(n_embd={}), "config.json: n_embd must be a positive integer, got {}"),
    (_config_json(n_head=0), "config.json: n_head must be a positive integer, got 0"),
    (_config_json(n_layer=True), "config.json: n_layer must be a positive integer, got True"),
    ({k: v for k, v in _config_json().items() if k != "n_positions"}, "config.json: missing 'n_positions'"),
    (_config_json(n_head=3), "config.json: GPT2Config: channels 4 not divisible by num_heads 3"),
])
def test_import_hf_names_the_config_and_what_is_wrong_with_it(tmp_path, config, message):
    import json
    pytest.importorskip("safetensors")   # import_hf first asks for the package (numbagpt[hf])
    d = tmp_path / "hf"
    d.mkdir()
    path = d / "config.json"
    if isinstance(config, bytes):
        path.write_bytes(config)
    else:
        path.write_text(config if isinstance(config, str) else json.dumps(config))
    with pytest.raises(ValueError) as e:
        api.import_hf(str(d), str(tmp_path / "m.bin"))
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value), str(e.value)
    assert not (tmp_path / "m.bin").exists()


@pytest.mark.parametrize("make, what", [(lambda p: p.write_bytes(b"llm.c model"), "not a directory"),
                                        (lambda p: None, "no such directory")])
def test_import_hf_wants_a_directory(tmp_path, make, what):
    pytest.importorskip("safetensors")
    src = tmp_path / "model.bin"
    make(src)
    with pytest.raises(ValueError, match=f"^{src}: {what} \\(a Hugging Face model directory"):
        api.import_hf(str(src), str(tmp_path / "m.bin"))


def test_train_says_the_prepare_lines_where_say_says(tmp_path, monkeypatch, capsys):
    """train(config, say=...) takes every line, the built-in data's `[prepare]` lines too (they were
    printed whatever `say` was)."""
    from numbagpt.dist import World
    from numbagpt.files import data, formats
    from numbagpt.train import trainer
    monkeypatch.setenv("NUMBAGPT_CACHE", str(tmp_path))
    paths = {k: f"{data.builtin_data_dir()}/shakespeare_{k}.bin" for k in ("train", "val", "tokenizer")}
    data.make_dir(data.builtin_data_dir())
    formats.write_shard(paths["train"], [50256, 1, 2])
    formats.write_shard(paths["val"], [50256, 3, 4])
    formats.write_tokenizer_file(paths["tokenizer"], [b"x"] * 50257, 50256)
    lines = []
    assert trainer.data_paths(api.TrainConfig(), World(None), lines.append) == (
        paths["train"], paths["val"], paths["tokenizer"])
    assert lines == [f"[prepare] using the prepared built-in Shakespeare in {data.builtin_data_dir()}"]
    assert capsys.readouterr().out == ""


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from micro_data import play_corpus
    paths, model_path, _ = play_corpus(tmp_path_factory.mktemp("corpus"))
    return paths, model_path


def tiny_run(corpus, out, **changes):
    paths, model_path = corpus
    return api.TrainConfig(**{**dict(train_data=paths["train"], val_data=paths["val"], model=model_path,
                                     output_dir=str(out), batch_size=4, seq_len=16, max_steps=2, val_every=0,
                                     sample_every=0, warmup_iters=0, omp_threads=1), **changes})


def test_numpy_numbers_and_bools_are_kept_as_the_flags_give_them(corpus, tmp_path):
    """np.int64 / np.float32 values passed the checks and the run trained, then died writing its
    first checkpoint ("Object of type int64 is not JSON serializable"), leaving a directory it
    refused to resume; True for -y was refused, 1 for --overwrite too."""
    import json

    import numpy as np
    from numbagpt.files.formats import read_state_header
    config = tiny_run(corpus, tmp_path / "out", seed=np.int64(7), lr=np.float32(1e-2), checkpoint_every=np.int32(2),
                      resume=True, shuffle=np.bool_(False), overwrite=1)
    assert (type(config.seed), type(config.lr), config.resume, config.shuffle, config.overwrite) == (
        int, float, 1, 0, True)
    assert api.train(config, say=lambda line: None).steps == 2
    run = read_state_header(str(tmp_path / "out" / "state_00000002_00000.bin"))["run"]
    assert run["seed"] == 7 and json.loads(json.dumps(run)) == run
    for bad, message in [(dict(batch_size=True), "-b must be an integer, got True"),
                         (dict(overwrite=2), "--overwrite must be true or false, got 2"),
                         (dict(max_steps=2.0), "-x must be an integer, got 2.0")]:
        with pytest.raises(ValueError) as e:
            tiny_run(corpus, tmp_path, **bad)
        assert str(e.value) == message


def test_train_leaves_the_callers_threads_and_no_open_file(corpus, tmp_path):
    """train() set Numba's threads for its run (--omp-threads) and left them so; a run that raised
    (from on_step, a KeyboardInterrupt in a notebook) left main.log's descriptor open."""
    import numba
    threads = numba.get_num_threads()
    numba.set_num_threads(2 if numba.config.NUMBA_NUM_THREADS >= 2 else 1)
    before = numba.get_num_threads()
    fds = set(os.listdir("/proc/self/fd"))

    def boom(record):
        raise KeyboardInterrupt
    try:
        for _ in range(3):
            with pytest.raises(KeyboardInterrupt):
                api.train(tiny_run(corpus, tmp_path / "out", overwrite=True), on_step=boom, say=lambda line: None)
            assert numba.get_num_threads() == before
        assert set(os.listdir("/proc/self/fd")) == fds
        api.train(tiny_run(corpus, tmp_path / "out", overwrite=True), say=lambda line: None)
        assert numba.get_num_threads() == before and set(os.listdir("/proc/self/fd")) == fds
    finally:
        numba.set_num_threads(threads)


def test_a_stop_request_gives_the_signals_back_when_closed():
    """StopRequest takes SIGINT, SIGTERM and SIGHUP; closed (or at the end of its `with`), a notebook's
    Ctrl-C is a KeyboardInterrupt again (after one signal it ignored every later one)."""
    import signal
    from numbagpt.train.rundir import Interrupted, StopRequest
    before = {s: signal.getsignal(s) for s in StopRequest.SIGNALS}
    with StopRequest():
        with pytest.raises(Interrupted):
            os.kill(os.getpid(), signal.SIGINT)
    assert {s: signal.getsignal(s) for s in StopRequest.SIGNALS} == before
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)


def test_a_float_field_refuses_a_bool():
    """TrainConfig(lr=True) is refused, not taken as the number 1.0 (a bool is no learning rate)."""
    with pytest.raises(ValueError) as e:
        api.TrainConfig(lr=True)
    assert str(e.value) == "-l must be a number, got True"


def test_sample_finds_the_tokenizer_of_a_run_directory(corpus, tmp_path):
    """model_file= takes a run directory, as load_model's spec and sample_gpt2's -e do: the tokenizer
    beside its newest model (it looked in the directory's parent and found none); a model file that
    does not exist is refused (it fell back to the built-in tokenizers)."""
    import shutil
    paths, model_path = corpus
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(model_path, run / "model_00000001.bin")
    shutil.copy(paths["tokenizer"], run / "tokenizer.bin")
    m = api.load_model(str(run))
    assert api.sample(m, "", 4, model_file=str(run), seed=3) == api.sample(m, "", 4, tokenizer=paths["tokenizer"],
                                                                           seed=3)
    with pytest.raises(FileNotFoundError) as e:
        api.sample(m, "", 4, model_file=str(tmp_path / "gone.bin"))
    assert str(e.value) == f"{tmp_path / 'gone.bin'}: no such model file or directory (model_file)"


def test_a_finished_run_resumed_is_the_model_its_flags_make(corpus, tmp_path):
    """-y 1 on a run that finished without a checkpoint: its final model comes back (with -r), and
    flags that make another model are refused (the old model came back whatever they said)."""
    from numbagpt.train.rundir import RunDirError
    paths, _ = corpus
    made = dict(model="tiny", layers=1, heads=2, channels=16, max_seq_len=16)
    first = api.train(tiny_run(corpus, tmp_path / "out", **made), say=lambda line: None)
    said = []
    again = api.train(tiny_run(corpus, tmp_path / "out", resume=1, recompute=2, **made), say=said.append)
    assert (again.model_file, again.steps, again.val_loss, again.model.recompute) == (first.model_file, 2, None, 2)
    # no checkpoint to train on from: a larger -x is a new run (it said it trained on from the last one)
    assert said[0].endswith("(step 2 = -x); it wrote no checkpoint (-n), so a larger -x is a new run "
                             "(--overwrite, or another -o)"), said
    assert (again.model.params_flat == first.model.params_flat).all()
    for change, said in [(dict(channels=32), "L=1 NH=2 C=32 maxT=16"), (dict(model="d12", layers=None, heads=None,
                          channels=None, max_seq_len=None), "L=12 NH=12 C=768 maxT=1024")]:
        with pytest.raises(RunDirError) as e:
            api.train(tiny_run(corpus, tmp_path / "out", resume=1, **{**made, **change}), say=lambda line: None)
        assert f"its finished run's final model {first.model_file} is L=1 NH=2 C=16 maxT=16" in str(e.value)
        assert said in str(e.value) and "resume with the run's own flags, or give another -o" in str(e.value)


def test_one_stop_request_serves_run_after_run(corpus, tmp_path):
    """A StopRequest whose run a signal ended takes signals again for the next run (it stopped the next
    run after its first step, and ignored a real Ctrl-C); train() gives it the run's ranks."""
    import signal
    from numbagpt.train.rundir import Interrupted, StopRequest
    with StopRequest() as stop:
        with pytest.raises(Interrupted):
            api.train(tiny_run(corpus, "", checkpoint_every=0, max_steps=3), stop=stop, say=lambda line: None,
                      on_step=lambda r: r.step == 2 and os.kill(os.getpid(), signal.SIGINT))
        steps = []
        try:   # (an Interrupted let through would end pytest's whole session, as a Ctrl-C)
            api.train(tiny_run(corpus, "", checkpoint_every=0, max_steps=3), stop=stop, say=lambda line: None,
                      on_step=lambda r: steps.append(r.step))
        except Interrupted:
            pytest.fail(f"the second run was stopped after steps {steps}, with no signal sent")
        assert steps == [1, 2, 3] and stop.world is not None
        with pytest.raises(Interrupted):
            api.train(tiny_run(corpus, "", checkpoint_every=0, max_steps=3), stop=stop, say=lambda line: None,
                      on_step=lambda r: os.kill(os.getpid(), signal.SIGINT))


def test_expect_world_size_is_checked_against_a_world_given(corpus):
    from numbagpt import dist
    with pytest.raises(dist.WorldSizeError) as e:
        api.train(tiny_run(corpus, "", expect_world_size=3), world=dist.init_world(), say=lambda line: None)
    assert "this process sees an MPI world of 1 process, but --expect-world-size=3" in str(e.value)


def test_omp_threads_past_numbas_cap_is_said_as_capped():
    """In a process that imported Numba, at most its NUMBA_NUM_THREADS threads run: the warning says the
    run takes that many (it said the threads would take turns on the cores, and ran fewer, silently)."""
    import numba
    cap = numba.config.NUMBA_NUM_THREADS
    assert api.TrainConfig(omp_threads=cap + 1).warnings() == [
        f"--omp-threads {cap + 1}: Numba runs at most {cap} threads in this process (NUMBA_NUM_THREADS, read "
        f"when Numba was imported; set it before, as bin/train_gpt2 does): the run takes {cap}"]
