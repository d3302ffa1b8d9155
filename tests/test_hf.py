"""Hugging Face interop: export -> transformers gives numbagpt's logits; import gives transformers'
parameters bit for bit. Skipped when safetensors / transformers / torch are not installed."""
import json
import os

import numpy as np
import pytest

from numbagpt.config import GPT2Config
from numbagpt.model import GPT2

st = pytest.importorskip("safetensors.numpy")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from numbagpt.files import formats, hf  # noqa: E402
from numbagpt.cli.hf import export_main, import_main  # noqa: E402

V = 50257


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def random_model(path, V=V, seed=3):
    cfg = GPT2Config(max_seq_len=24, vocab_size=V, num_layers=2, num_heads=4, channels=32)
    model = GPT2(cfg)
    model.init_weights(seed)
    params = model.parameters_host()
    rng = np.random.default_rng(seed)
    noisy = params + rng.normal(0, 0.05, params.size).astype(np.float32)  # biases, ln weights off 0 and 1
    noisy[V * 32:cfg.padded_vocab_size * 32] = 0.0  # the padded wte rows stay 0, as in training
    model.load_parameters(noisy * 3)
    model.save(path)
    return model


def test_export_loads_in_transformers_with_equal_logits(tmp_path):
    model = random_model(tmp_path / "m.bin")
    assert export_main([str(tmp_path / "m.bin"), str(tmp_path / "hf")]) == 0
    hfm = transformers.GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    x = np.random.default_rng(0).integers(0, V, (3, 24)).astype(np.int32)
    model.forward(x)
    ours = model.logits_host()[:, :, :V]
    with torch.no_grad():
        theirs = hfm(torch.from_numpy(x.astype(np.int64))).logits.numpy()
    assert theirs.shape == ours.shape
    assert np.abs(ours).max() > 1.0
    np.testing.assert_allclose(theirs, ours, rtol=0, atol=1e-4)
    # the tokenizer files: AutoTokenizer encodes as numbagpt's GPT-2 tokenizer does
    from numbagpt.files.tokenizer import GPT2Tokenizer
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    text = "ROMEO: But soft, what light through yonder window breaks?\n  It is the east."
    assert tok(text)["input_ids"] == GPT2Tokenizer().encode(text)
    assert tok.eos_token_id == 50256


def test_import_from_transformers_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=300, n_positions=16, n_embd=24, n_layer=2, n_head=3)
    hfm = transformers.GPT2LMHeadModel(config)
    hfm.save_pretrained(tmp_path / "hf")
    assert import_main([str(tmp_path / "hf"), str(tmp_path / "m.bin")]) == 0
    model = GPT2.from_file(tmp_path / "m.bin")
    cfg = model.config
    assert (cfg.vocab_size, cfg.padded_vocab_size, cfg.max_seq_len, cfg.channels, cfg.num_layers, cfg.num_heads) \
        == (300, 384, 16, 24, 2, 3)
    views = model.param_layout.host_views(model.parameters_host())
    sd = {k: v.detach().numpy() for k, v in hfm.state_dict().items()}
    np.testing.assert_array_equal(views["wte"][:300], sd["transformer.wte.weight"])
    np.testing.assert_array_equal(views["wte"][300:], 0.0)
    np.testing.assert_array_equal(views["wpe"], sd["transformer.wpe.weight"])
    for l in range(2):
        h = f"transformer.h.{l}."
        np.testing.assert_array_equal(views["qkvw"][l], sd[h + "attn.c_attn.weight"].T)
        np.testing.assert_array_equal(views["qkvb"][l], sd[h + "attn.c_attn.bias"])
        np.testing.assert_array_equal(views["attprojw"][l], sd[h + "attn.c_proj.weight"].T)
        np.testing.assert_array_equal(views["fcw"][l], sd[h + "mlp.c_fc.weight"].T)
        np.testing.assert_array_equal(views["fcprojw"][l], sd[h + "mlp.c_proj.weight"].T)
        for ours, theirs in [("ln1w", "ln_1.weight"), ("ln1b", "ln_1.bias"), ("ln2w", "ln_2.weight"),
                             ("ln2b", "ln_2.bias"), ("attprojb", "attn.c_proj.bias"), ("fcb", "mlp.c_fc.bias"),
                             ("fcprojb", "mlp.c_proj.bias")]:
            np.testing.assert_array_equal(views[ours][l], sd[h + theirs])
    np.testing.assert_array_equal(views["lnfw"], sd["transformer.ln_f.weight"])
    np.testing.assert_array_equal(views["lnfb"], sd["transformer.ln_f.bias"])


def test_round_trip_is_bit_exact(tmp_path):
    model = random_model(tmp_path / "m.bin", V=100)  # not GPT-2's vocabulary: no tokenizer files
    files = hf.export_hf(tmp_path / "m.bin", tmp_path / "hf")
    assert "vocab.json" not in files and "model.safetensors" in files
    hf.import_hf(tmp_path / "hf", tmp_path / "back.bin")
    np.testing.assert_array_equal(GPT2.from_file(tmp_path / "back.bin").parameters_host(), model.parameters_host())


def test_import_writes_llmc_bf16_with_save_precision(tmp_path, capsys):
    model = random_model(tmp_path / "m.bin", V=100)
    hf.export_hf(tmp_path / "m.bin", tmp_path / "hf")
    assert import_main([str(tmp_path / "hf"), str(tmp_path / "b.bin"), "--save-precision", "bf16"]) == 0
    assert "(bf16)" in capsys.readouterr().out
    assert formats.read_model_header(str(tmp_path / "b.bin"))[1] == 5
    # the bytes of formats.write_model(..., "bfloat16") of the same weights (tested against torch's there)
    formats.write_model(tmp_path / "want.bin", model.config, model.parameters_host(), "bfloat16")
    assert (tmp_path / "b.bin").read_bytes() == (tmp_path / "want.bin").read_bytes()


def test_import_errors_name_the_file(tmp_path, capsys):
    d = tmp_path / "hf"
    d.mkdir()
    assert import_main([str(d), str(tmp_path / "m.bin")]) == 1
    assert f"{d / 'config.json'}: no such file" in capsys.readouterr().err
    config = hf.hf_config(GPT2Config(max_seq_len=8, vocab_size=10, num_layers=1, num_heads=1, channels=4))
    (d / "config.json").write_text(json.dumps(dict(config, activation_function="relu")))
    assert import_main([str(d), str(tmp_path / "m.bin")]) == 1
    assert "activation_function = 'relu'" in capsys.readouterr().err
    (d / "config.json").write_text(json.dumps(config))
    assert import_main([str(d), str(tmp_path / "m.bin")]) == 1
    assert "model.safetensors: no such file" in capsys.readouterr().err
    st.save_file({"transformer.wte.weight": np.zeros((10, 5), np.float32)}, str(d / "model.safetensors"))
    assert import_main([str(d), str(tmp_path / "m.bin")]) == 1
    assert "'wte.weight' has shape (10, 5), config.json says (10, 4)" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "m.bin")
    assert export_main([str(tmp_path / "missing.bin"), str(d)]) == 1
    assert "missing.bin: no such model file or directory (MODEL_BIN)" in capsys.readouterr().err


@pytest.mark.parametrize("key, value", [("layer_norm_epsilon", 1e-6), ("scale_attn_weights", False),
                                        ("scale_attn_by_inverse_layer_idx", True), ("n_inner", 8),
                                        ("tie_word_embeddings", False), ("activation_function", "gelu")])
def test_import_refuses_a_config_numbagpt_would_compute_otherwise(tmp_path, capsys, key, value):
    # GPT-2 variants whose forward is not GPT-2's (another eps, unscaled or layer-scaled attention, an
    # MLP other than 4C): refused by name before the weights are read, not imported as if GPT-2's
    d = tmp_path / "hf"
    d.mkdir()
    config = hf.hf_config(GPT2Config(max_seq_len=8, vocab_size=10, num_layers=1, num_heads=1, channels=4))
    (d / "config.json").write_text(json.dumps(dict(config, **{key: value})))
    assert import_main([str(d), str(tmp_path / "m.bin")]) == 1
    assert f"{key} = {value!r}" in capsys.readouterr().err


def _exported(tmp_path):
    """An exported HF directory of a random model, its config and tensors."""
    random_model(tmp_path / "m.bin")
    d = tmp_path / "hf"
    assert export_main([str(tmp_path / "m.bin"), str(d)]) == 0
    return d, json.loads((d / "config.json").read_text()), st.load_file(str(d / "model.safetensors"))


@pytest.mark.parametrize("change, says", [
    (dict(config=dict(n_layer=10 ** 9)), "tensor 'h.999999999.ln_1.weight' is missing"),
    (dict(config=dict(n_positions=2 ** 62)), "tensor 'wpe.weight' has shape (24, 32), config.json says "
                                               "(4611686018427387904, 32)"),
    (dict(tensor=("transformer.h.1.attn.c_attn.bias", np.int32)), "tensor 'h.1.attn.c_attn.bias' holds int32, "
                                                                   "not floating-point weights"),
    (dict(tensor=("transformer.ln_f.bias", bool)), "tensor 'ln_f.bias' holds bool, not floating-point weights"),
    (dict(nan="transformer.h.0.mlp.c_fc.weight"), "1 parameter is NaN or infinite (the first in fcw): a model "
                                                   "that diverged, or a damaged file"),
])
def test_import_refuses_what_does_not_make_the_model_before_allocating_it(tmp_path, capsys, change, says):
    """A config that asks for more than the tensors hold (a billion layers: a MemoryError's
    traceback), integer or boolean tensors (cast silently), a NaN (imported and written): one line
    naming the file, and no model written."""
    d, config, tensors = _exported(tmp_path)
    (d / "config.json").write_text(json.dumps(dict(config, **change.get("config", {}))))
    if "tensor" in change:
        name, dtype = change["tensor"]
        tensors[name] = tensors[name].astype(dtype)
    if "nan" in change:
        tensors[change["nan"]][3, 5] = np.nan
    st.save_file(tensors, str(d / "model.safetensors"))
    assert import_main([str(d), str(tmp_path / "new.bin")]) == 1
    assert capsys.readouterr().err == f"import_hf: error: {d / 'model.safetensors'}: {says}\n"
    assert not (tmp_path / "new.bin").exists()


def test_a_char_vocabulary_exports_its_own_end_of_text(tmp_path):
    # a char model's EOT is its last id (numbagpt's CharTokenizer), not GPT-2's 50256
    from numbagpt.files.tokenizer import CharTokenizer
    tok = CharTokenizer(list("abcdefg"))
    random_model(tmp_path / "m.bin", V=tok.vocab_size)
    assert export_main([str(tmp_path / "m.bin"), str(tmp_path / "hf")]) == 0
    for name in ("config.json", "generation_config.json"):
        c = json.loads((tmp_path / "hf" / name).read_text())
        assert c["eos_token_id"] == c["bos_token_id"] == tok.eot_token == tok.vocab_size - 1, name


def test_export_takes_a_run_directory_as_every_commands_e(tmp_path, capsys):
    """export_hf RUN_DIR: the run's newest model, as -e of the other commands, named in the wrote line
    (it said 'a directory, not a model file')."""
    (tmp_path / "run").mkdir()
    model = random_model(tmp_path / "run" / "model_00000007.bin", V=100)
    assert export_main([str(tmp_path / "run"), str(tmp_path / "hf")]) == 0
    assert f"from {tmp_path / 'run' / 'model_00000007.bin'}:" in capsys.readouterr().out
    hf.import_hf(tmp_path / "hf", tmp_path / "back.bin")
    np.testing.assert_array_equal(GPT2.from_file(tmp_path / "back.bin").parameters_host(), model.parameters_host())


def test_import_refuses_an_existing_file_and_export_a_file_for_its_dir(tmp_path, capsys):
    """import_hf replaces MODEL_BIN only with --force (as export_hf an earlier export); export_hf names
    OUT_DIR when it is a file or cannot be made (it printed Python's "[Errno 17] File exists")."""
    model = random_model(tmp_path / "m.bin", V=100)
    hf.export_hf(tmp_path / "m.bin", tmp_path / "hf")
    (tmp_path / "keep.bin").write_bytes(b"a trained model")
    assert import_main([str(tmp_path / "hf"), str(tmp_path / "keep.bin")]) == 1
    assert f"{tmp_path / 'keep.bin'}: exists: write a new file, or --force to replace it" in capsys.readouterr().err
    assert (tmp_path / "keep.bin").read_bytes() == b"a trained model"
    assert import_main([str(tmp_path / "hf"), str(tmp_path / "keep.bin"), "--force"]) == 0
    np.testing.assert_array_equal(GPT2.from_file(tmp_path / "keep.bin").parameters_host(), model.parameters_host())
    capsys.readouterr()
    assert export_main([str(tmp_path / "m.bin"), str(tmp_path / "keep.bin")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'keep.bin'}: not a directory" in err and "Errno" not in err
    assert export_main([str(tmp_path / "m.bin"), str(tmp_path / "keep.bin" / "sub")]) == 1
    err = capsys.readouterr().err
    assert f"{tmp_path / 'keep.bin' / 'sub'}: cannot create the directory" in err and "Errno" not in err


def _saved(tmp_path, **kwargs):
    """A small transformers GPT-2 saved by save_pretrained(**kwargs), and its float32 state dict."""
    torch.manual_seed(0)
    config = transformers.GPT2Config(vocab_size=300, n_positions=16, n_embd=24, n_layer=2, n_head=3)
    hfm = transformers.GPT2LMHeadModel(config)
    if kwargs.pop("bf16", False):
        hfm = hfm.to(torch.bfloat16)
    hfm.save_pretrained(tmp_path / "hf", **kwargs)
    return {k: v.detach().float().numpy() for k, v in hfm.state_dict().items()}


@pytest.mark.parametrize("save", [dict(bf16=True), dict(max_shard_size="20KB"), dict(bf16=True, max_shard_size="10KB")],
                         ids=["bf16", "sharded", "bf16-sharded"])
def test_import_reads_bfloat16_and_sharded_saves(tmp_path, save):
    """A model saved in bfloat16 (safetensors' numpy reader has no type for it: import_hf called the
    file unreadable) or in shards (model.safetensors.index.json and its files: 'no such file'): the
    imported weights are the saved ones, a bfloat16's widened exactly."""
    sd = _saved(tmp_path, **save)
    names = os.listdir(tmp_path / "hf")
    assert ("model.safetensors.index.json" in names) == ("max_shard_size" in save)
    assert import_main([str(tmp_path / "hf"), str(tmp_path / "m.bin")]) == 0
    views = GPT2.from_file(tmp_path / "m.bin").param_layout.host_views(
        GPT2.from_file(tmp_path / "m.bin").parameters_host())
    np.testing.assert_array_equal(views["wte"][:300], sd["transformer.wte.weight"])
    np.testing.assert_array_equal(views["fcprojw"][1], sd["transformer.h.1.mlp.c_proj.weight"].T)
    np.testing.assert_array_equal(views["lnfb"], sd["transformer.ln_f.bias"])
    if save.get("bf16"):
        assert not (views["qkvw"].view(np.uint32) & 0xFFFF).any()   # every value a bfloat16
        assert np.abs(views["qkvw"]).max() > 0


def test_a_sharded_save_with_a_missing_or_bad_shard_is_one_line(tmp_path, capsys):
    _saved(tmp_path, max_shard_size="20KB")
    capsys.readouterr()   # transformers' progress bar
    d = tmp_path / "hf"
    index = json.loads((d / "model.safetensors.index.json").read_text())
    shard = sorted(set(index["weight_map"].values()))[-1]
    (d / shard).rename(d / "elsewhere")
    assert import_main([str(d), str(tmp_path / "m.bin")]) == 1
    assert capsys.readouterr().err == (f"import_hf: error: {d / shard}: no such file "
                                       f"(model.safetensors.index.json names it)\n")
    (d / shard).write_bytes(b"garbage")
    assert import_main([str(d), str(tmp_path / "m.bin")]) == 1
    assert capsys.readouterr().err.startswith(f"import_hf: error: {d / shard}: not a readable safetensors file")
    (d / "model.safetensors.index.json").write_text("[1, 2]")
    assert import_main([str(d), str(tmp_path / "m.bin")]) == 1
    assert "model.safetensors.index.json: not a safetensors index" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "m.bin")


def test_export_force_removes_what_save_pretrained_left(tmp_path):
    """--force over a directory that save_pretrained wrote (tokenizer.json, a sharded index): a small
    model's export there loads as itself, not with GPT-2's tokenizer or the earlier weights."""
    _saved(tmp_path, max_shard_size="20KB")
    hf_dir = tmp_path / "hf"
    (hf_dir / "tokenizer.json").write_text("{}")
    (hf_dir / "added_tokens.json").write_text("{}")
    random_model(tmp_path / "m.bin", V=100)
    hf.export_hf(tmp_path / "m.bin", hf_dir, force=True)
    left = set(os.listdir(hf_dir))
    assert not left & {"tokenizer.json", "added_tokens.json", "model.safetensors.index.json"}, left
    assert not [n for n in left if n.startswith("model-")], left   # the sharded save's shards too
    hfm = transformers.GPT2LMHeadModel.from_pretrained(hf_dir)
    assert hfm.config.vocab_size == 100


def test_import_reads_the_original_gpt2_key_names(tmp_path):
    # OpenAI's GPT-2 on the Hugging Face hub stores GPT2Model keys (no "transformer." prefix) and the
    # causal-mask buffers h.N.attn.bias; lm_head.weight, when present, must be the tied wte
    model = random_model(tmp_path / "m.bin", V=100)
    hf.export_hf(tmp_path / "m.bin", tmp_path / "hf")
    tensors = st.load_file(str(tmp_path / "hf" / "model.safetensors"))
    old = {k[len("transformer."):]: v for k, v in tensors.items()}
    old["h.0.attn.bias"] = np.tril(np.ones((1, 1, 24, 24), np.float32))
    old["h.1.attn.masked_bias"] = np.array(-1e4, np.float32)   # older transformers' buffer
    old["lm_head.weight"] = old["wte.weight"]
    st.save_file(old, str(tmp_path / "hf" / "model.safetensors"))
    hf.import_hf(tmp_path / "hf", tmp_path / "back.bin")
    np.testing.assert_array_equal(GPT2.from_file(tmp_path / "back.bin").parameters_host(), model.parameters_host())
    for off in (old["wte.weight"] * 2, old["wte.weight"].copy()):   # and one value one ulp off
        off.flat[7] = np.nextafter(off.flat[7], np.float32(np.inf)) if off.flat[7] == old["wte.weight"].flat[7] \
            else off.flat[7]
        old["lm_head.weight"] = off
        st.save_file(old, str(tmp_path / "hf" / "model.safetensors"))
        with pytest.raises(hf.HFError, match="lm_head.weight differs from wte.weight"):
            hf.import_hf(tmp_path / "hf", tmp_path / "back.bin")


@pytest.mark.parametrize("crash", ["model.safetensors@100", "config.json@end", "vocab.json@10"])
def test_an_export_over_another_cut_short_never_mixes_two_models(tmp_path, crash):
    """export_hf --force over an earlier export (a GPT-2 vocabulary's), killed on the way: every file
    there is the new export's (it left the new config.json beside the old model.safetensors, and the
    killed writer's temporary for good); the next export clears the temporary."""
    import subprocess
    import sys
    from safetensors.numpy import load_file
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    random_model(tmp_path / "a.bin")
    small = GPT2(GPT2Config(max_seq_len=8, vocab_size=11, num_layers=1, num_heads=2, channels=8))
    small.init_weights(1)
    small.save(tmp_path / "b.bin")
    export = [sys.executable, os.path.join(root, "bin", "export_hf")]
    assert subprocess.run(export + [str(tmp_path / "a.bin"), str(tmp_path / "hf")], capture_output=True).returncode == 0
    assert "vocab.json" in os.listdir(tmp_path / "hf")
    if crash.startswith("vocab"):   # b has GPT-2's vocabulary too: its tokenizer files are written
        random_model(tmp_path / "b.bin", seed=9)
    proc = subprocess.run(export + [str(tmp_path / "b.bin"), str(tmp_path / "hf"), "--force"], capture_output=True,
                          env=dict(os.environ, NUMBAGPT_TEST_CRASH=crash))
    assert proc.returncode == -9, proc.stderr
    hf_dir = tmp_path / "hf"
    b = hf.to_hf_tensors(*formats.read_model(str(tmp_path / "b.bin")))
    if (hf_dir / "config.json").exists():
        assert json.loads((hf_dir / "config.json").read_text())["n_embd"] == b["transformer.wte.weight"].shape[1]
    if (hf_dir / "model.safetensors").exists():
        got = load_file(str(hf_dir / "model.safetensors"))
        np.testing.assert_array_equal(got["transformer.wte.weight"], b["transformer.wte.weight"])
    assert not ((hf_dir / "vocab.json").exists() and crash == "vocab.json@10")   # cut short: not there
    proc = subprocess.run(export + [str(tmp_path / "b.bin"), str(hf_dir), "--force"], capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert not [n for n in os.listdir(hf_dir) if n.startswith(".")]


def test_export_into_an_existing_empty_directory_needs_no_force(tmp_path):
    """An existing but empty directory is no earlier export: export_hf writes there without force."""
    random_model(tmp_path / "m.bin")
    (tmp_path / "hf").mkdir()
    hf.export_hf(tmp_path / "m.bin", tmp_path / "hf")
    assert {"config.json", "model.safetensors"} <= set(os.listdir(tmp_path / "hf"))


def test_exported_tokenizer_config_has_the_models_max_length(tmp_path):
    """tokenizer_config.json's model_max_length is the model's max_seq_len (24 here), not GPT-2's 1024."""
    d, config, _ = _exported(tmp_path)
    tok = json.loads((d / "tokenizer_config.json").read_text())
    assert config["n_positions"] == 24
    assert tok["model_max_length"] == 24


@pytest.mark.parametrize("shard", ["sub/model-00001-of-00002.safetensors", "../x.safetensors"])
def test_a_sharded_index_naming_a_file_outside_its_directory_is_refused(tmp_path, capsys, shard):
    """A weight_map entry with a directory part (a subdirectory, or ..) is refused by name, not read."""
    _saved(tmp_path, max_shard_size="20KB")
    capsys.readouterr()
    d = tmp_path / "hf"
    index_path = d / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    first = sorted(set(index["weight_map"].values()))[0]
    (d / "sub").mkdir()
    for target in (d / "sub" / os.path.basename(shard), tmp_path / "x.safetensors"):
        target.write_bytes((d / first).read_bytes())
    key = next(iter(index["weight_map"]))
    index["weight_map"][key] = shard
    index_path.write_text(json.dumps(index))
    assert import_main([str(d), str(tmp_path / "m.bin")]) == 1
    assert capsys.readouterr().err == (f"import_hf: error: {index_path}: weight_map names {shard!r}, "
                                       f"not a file beside it\n")
    assert not os.path.exists(tmp_path / "m.bin")
