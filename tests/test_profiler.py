"""numbagpt.profiler and bin/profile_gpt2: FLOP and byte counts of every kernel against formulas written
out here by hand, memory accounting against the buffers a GPT2 really allocates, a profile of a micro
model (every kernel family timed, totals consistent), the JSON schema, and the command line."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

import numbagpt.cpu as cpu
from numbagpt.files import formats
from numbagpt import layout, profiler
from numbagpt.config import GPT2Config
from numbagpt.model import GPT2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = GPT2Config(max_seq_len=16, vocab_size=97, num_layers=2, num_heads=2, channels=32)
B, T = 2, 8
FAMILIES = {"encoder", "layernorm", "matmul", "attention", "gelu", "crossentropy", "adamw"}


# ------------------------------------------------------------------------------ FLOP and byte counts

def test_kernel_costs_match_hand_formulas():
    C, NH, V, Vp, OC = 32, 2, 97, 128, 96
    hs = C // NH                      # 16
    BT = B * T                        # 16
    BTC = BT * C                      # 512
    pairs = B * NH * (T * (T + 1) // 2)   # 2·2·36 = 144 causal (query, key) pairs
    N = 1000
    x = object()   # the cost functions look at sizes only (and at whether bias/dbias is None)
    cost = profiler.kernel_cost
    expect = {
        # name: (call, flops, bytes)
        "matmul_forward": (cost("matmul_forward", x, x, x, x, B, T, C, OC),
                           2 * B * T * C * OC + B * T * OC, 4 * (BTC + OC * C + OC + BT * OC)),
        "matmul_forward/nobias": (cost("matmul_forward", x, x, x, None, B, T, C, OC),
                                  2 * B * T * C * OC, 4 * (BTC + OC * C + BT * OC)),
        "matmul_backward": (cost("matmul_backward", x, x, x, x, x, x, B, T, C, OC),
                            2 * BT * OC * C + 2 * OC * BT * C + BT * OC,
                            4 * (BT * OC + BTC + OC * C + 2 * BTC + 2 * OC * C + 2 * OC)),
        "matmul_backward/nobias": (cost("matmul_backward", x, x, None, x, x, x, B, T, C, OC),
                                   4 * BT * C * OC, 4 * (BT * OC + 3 * BTC + 3 * OC * C)),
        "encoder_forward": (cost("encoder_forward", x, x, x, x, B, T, C),
                            BTC, 4 * (BT + BTC + T * C + BTC)),
        "encoder_backward": (cost("encoder_backward", x, x, x, x, B, T, C),
                             2 * BTC, 4 * (BTC + BT + 2 * BTC + 2 * T * C)),
        "layernorm_forward": (cost("layernorm_forward", x, x, x, x, x, x, B, T, C),
                              8 * BTC, 4 * (BTC + C + C + BTC + BT + BT)),
        "layernorm_backward": (cost("layernorm_backward", x, x, x, x, x, x, x, x, B, T, C),
                               14 * BTC, 4 * (BTC + BTC + C + BT + BT + 2 * BTC + 2 * C + 2 * C)),
        "fused_residual_layernorm_forward": (cost("fused_residual_layernorm_forward", x, x, x, x, x, x, x, x, B, T, C),
                                             9 * BTC, 4 * (BTC + BTC + C + C + BTC + BTC + BT + BT)),
        "attention_forward": (cost("attention_forward", x, x, x, B, T, C, NH),
                              pairs * (4 * hs + 3), 4 * (3 * BTC + BTC + B * NH * T)),
        "attention_backward": (cost("attention_backward", x, x, x, x, x, B, T, C, NH),
                               pairs * (10 * hs + 4), 4 * (BTC + 3 * BTC + BTC + B * NH * T + 2 * 3 * BTC)),
        "gelu_forward": (cost("gelu_forward", x, x, N), 9 * N, 4 * 2 * N),
        "gelu_backward": (cost("gelu_backward", x, x, x, N), 19 * N, 4 * (N + N + 2 * N)),
        "crossentropy_forward": (cost("crossentropy_forward", x, x, x, B, T, V, Vp),
                                 3 * BT * V, 4 * (BT * V + BT + BT)),
        "crossentropy_backward": (cost("crossentropy_backward", x, x, x, x, B, T, V, Vp),
                                  5 * BT * V, 4 * (BT * V + BT + BT + BT * Vp)),
        "crossentropy_forward_backward": (cost("crossentropy_forward_backward", x, x, x, x, x, B, T, V, Vp),
                                          5 * BT * V, 4 * (BT * V + BT + BT + BT + BT * Vp)),
        "adamw_update": (cost("adamw_update", x, x, x, x, 1e-3, 0.9, 0.999, 1e-8, 0.0, 1.0, 1, N),
                         17 * N, 4 * (N + 6 * N)),
        "global_norm_squared": (cost("global_norm_squared", x, x, N), 2 * N, 4 * (N + 1)),
        # the bf16 pair counts as the fp32 one
        "matmul_forward_bf16": (cost("matmul_forward_bf16", x, x, x, x, B, T, C, OC),
                                2 * B * T * C * OC + B * T * OC, 4 * (BTC + OC * C + OC + BT * OC)),
        "matmul_backward_bf16": (cost("matmul_backward_bf16", x, x, None, x, x, x, B, T, C, OC),
                                 4 * BT * C * OC, 4 * (BT * OC + 3 * BTC + 3 * OC * C)),
    }
    for name, (got, flops, nbytes) in expect.items():
        assert got == (flops, nbytes), name
    # every kernel of the contract is covered
    assert {n.split("/")[0] for n in expect} == set(profiler.KERNEL_COSTS)
    # a few numbers by hand, as a check on the formulas above
    assert cost("matmul_forward", x, x, x, None, 2, 8, 32, 96) == (98304, 4 * (512 + 3072 + 1536))
    assert cost("attention_forward", x, x, x, 2, 8, 32, 2)[0] == 144 * 67


def test_helper_costs_count_bytes_moved():
    a = np.zeros(10, dtype=np.float32)
    assert profiler.kernel_cost("fill_zero", a) == (0, 40)
    assert profiler.kernel_cost("copy_to_device", a, a) == (0, 80)
    assert profiler.kernel_cost("to_device", np.zeros(3, dtype=np.int32)) == (0, 24)
    assert profiler.kernel_cost("zeros", 5) == (0, 20)


def test_model_flops_per_token_formulas():
    L, C, maxT, Vp = 2, 32, 16, 128
    n_all = Vp * C + maxT * C + L * (12 * C * C + 13 * C) + 2 * C
    f = profiler.model_flops_per_token(CFG, T)
    assert f["llmc_N"] == n_all == 30080
    assert f["palm_N"] == n_all - maxT * C
    assert f["palm"] == 6 * (n_all - maxT * C) + 12 * L * C * T
    assert f["llmc"] == 6 * n_all + 6 * L * C * T


# ------------------------------------------------------------------------------ memory accounting

def test_memory_estimate_matches_allocated_buffers():
    model = GPT2(CFG, backend="cpu")
    model.init_weights(0)
    rng = np.random.default_rng(0)
    x = rng.integers(0, CFG.vocab_size, (B, T)).astype(np.int32)
    model.forward(x, x)
    model.zero_grad()
    model.backward()
    model.update(1e-3, t=1)
    est = layout.memory_estimate(CFG, B, T, training=True)
    n = model.num_parameters
    assert est["num_parameters"] == n
    assert est["parameters"] == model.params_flat.nbytes == 4 * n
    assert est["gradients"] == model.grads_flat.nbytes
    assert est["adamw_m"] == model.m_flat.nbytes
    assert est["adamw_v"] == model.v_flat.nbytes
    assert est["activations"] == model.acts_flat.nbytes
    assert est["activation_grads"] == model.grads_acts_flat.nbytes
    assert est["tokens"] == model.inputs.nbytes + model.targets.nbytes
    assert est["total"] == sum(est[k] for k in ("parameters", "gradients", "adamw_m", "adamw_v",
                                                "activations", "activation_grads", "tokens"))
    assert sum(est["activation_tensors"].values()) == est["activations"]
    assert sum(est["parameter_tensors"].values()) == est["parameters"]
    # flash attention keeps only lse (B, NH, T) per layer, by hand; no tensor is (T, T)-sized
    assert est["activation_tensors"]["lse"] == 4 * CFG.num_layers * B * CFG.num_heads * T
    assert "att" not in est["activation_tensors"] and "preatt" not in est["activation_tensors"]
    assert profiler.allocated_bytes(model) == {k: est[k] for k in profiler.allocated_bytes(model)}
    # a ZeRO-1 shard's moments
    shard = GPT2(CFG, backend="cpu")
    shard.set_optimizer_shard(100, 1100)
    shard.forward(x, x)
    shard.zero_grad()
    shard.backward()
    shard.update(1e-3, t=1)
    est_shard = layout.memory_estimate(CFG, B, T, optimizer_params=1000)
    assert est_shard["adamw_m"] == shard.m_flat.nbytes == 4000

    inference = layout.memory_estimate(CFG, B, T, training=False)
    assert set(inference) >= {"parameters", "activations", "tokens", "total"}
    assert "gradients" not in inference and "adamw_m" not in inference
    line = layout.format_memory(est)
    assert "\n" not in line and "MiB" in line and "activations" in line


# ------------------------------------------------------------------------------ a profile

def test_a_bf16_model_times_its_matmul_pair():
    """With precision="bf16" the model's GEMMs are the bf16 pair, timed under their own names in the
    matmul family, with the fp32 pair's costs."""
    proxy = profiler.TimingBackend(cpu)
    model = GPT2(CFG, backend=proxy, precision="bf16")
    model.init_weights(1)
    x = np.zeros((B, T), np.int32)
    proxy.set_phase("step")
    model.forward(x, x)
    model.zero_grad()
    model.backward()
    proxy.collect()
    calls = {name: row[0] for (name, phase), row in proxy.stats.items()}
    L = CFG.num_layers
    assert calls.get("matmul_forward_bf16") == 4 * L + 1 and calls.get("matmul_backward_bf16") == 4 * L + 1
    assert "matmul_forward" not in calls and "matmul_backward" not in calls
    assert profiler.family("matmul_backward_bf16") == "matmul"


@pytest.fixture(scope="module")
def report():
    proxy = profiler.TimingBackend(cpu)
    model = GPT2(CFG, backend=proxy)
    model.init_weights(1)
    return profiler.profile_model(model, proxy, B, T, steps=2, warmup=1, baseline_steps=1,
                                  calibration_shape=(64, 64, 64), model_name="micro")


def test_profile_times_every_kernel_family(report):
    rows = {(k["name"], k["phase"]): k for k in report["kernels"]}
    assert {profiler.family(name) for name, _ in rows} >= FAMILIES
    for name in profiler.KERNEL_COSTS:
        # a bf16 model's (this profile is fp32); the loss alone (evaluation's) and its gradient alone
        # (a backward after a forward without train=True): a step runs the two fused
        if name.endswith("_bf16") or name in ("crossentropy_forward", "crossentropy_backward"):
            continue
        phases = [p for (n, p) in rows if n == name]
        assert phases, f"{name} never called"
    for k in report["kernels"]:
        if k["name"] in profiler.KERNEL_COSTS:
            assert k["ms"] > 0, k
            assert k["flops"] > 0 and k["bytes"] > 0, k
    L = CFG.num_layers
    assert rows[("matmul_forward", "forward")]["calls"] == 4 * L + 1
    assert rows[("matmul_backward", "backward")]["calls"] == 4 * L + 1
    assert rows[("layernorm_forward", "forward")]["calls"] == 1
    assert rows[("fused_residual_layernorm_forward", "forward")]["calls"] == 2 * L
    assert ("residual_forward", "forward") not in rows   # fused into the layernorms
    assert rows[("attention_backward", "backward")]["calls"] == L
    assert rows[("adamw_update", "update")]["calls"] == 1
    assert rows[("crossentropy_forward_backward", "forward")]["calls"] == 1
    # the three runs of the gradient buffer that no matmul_backward writes (wpe..ln1b, ln2w..ln2b, lnf*)
    assert rows[("fill_zero", "zero_grad")]["calls"] == 3


def test_profile_totals_are_consistent(report):
    r = report
    assert len(r["step_ms_all"]) == 2 and len(r["kernel_ms_all"]) == 2
    for step, kernels in zip(r["step_ms_all"], r["kernel_ms_all"]):
        assert 0 < kernels <= step
    assert r["kernel_ms"] == pytest.approx(sum(k["ms"] for k in r["kernels"]))
    assert r["kernel_ms"] <= r["step_ms"]
    assert r["host_ms"] == pytest.approx(r["step_ms"] - r["kernel_ms"])
    assert sum(k["pct"] for k in r["kernels"]) == pytest.approx(100 * r["kernel_ms"] / r["step_ms"])
    assert r["step_ms_unprofiled"] > 0 and len(r["step_ms_unprofiled_all"]) == 1
    assert r["tokens_per_s"] == pytest.approx(B * T / (r["step_ms_unprofiled"] / 1e3))
    assert r["compile_ms"] == r["warmup_ms"][0] > 0
    assert r["peak_gflops"] > 0 and r["mfu"] > 0
    assert r["mfu"] == pytest.approx(r["flops_per_token"] * r["tokens_per_s"] / 1e9 / r["peak_gflops"])
    assert r["mfu_llmc"] == pytest.approx(r["flops_per_token_llmc"] * r["tokens_per_s"] / 1e9 / r["peak_gflops"])
    assert r["kernel_flops_per_token"] == pytest.approx(sum(k["flops"] for k in r["kernels"]) / (B * T))
    for k in r["kernels"]:   # a kernel's rates are of its time per step (ms), its flops and bytes per step
        assert k["gflops"] == pytest.approx(k["flops"] / (k["ms"] / 1e3) / 1e9), k
        assert k["gbps"] == pytest.approx(k["bytes"] / (k["ms"] / 1e3) / 1e9), k
    assert r["overhead"]["proxy_ns_per_call"] >= 0
    assert all(math.isfinite(x) for x in r["losses"])
    # The matmuls' counted FLOPs are the 6·N of the matmul weights (and biases) per token: a check
    # that ties the per-call counts to the model-level formula.
    C, L, Vp = CFG.channels, CFG.num_layers, CFG.padded_vocab_size
    mm = sum(k["flops"] for k in r["kernels"] if k["name"].startswith("matmul_"))
    weights = L * (3 * C * C + C * C + 4 * C * C + 4 * C * C) + Vp * C
    biases = L * (3 * C + C + 4 * C + C)
    assert mm == 6 * weights * B * T + 2 * biases * B * T
    text = profiler.format_report(r)
    for word in ("matmul_forward", "attention_backward", "sum of kernels", "host / Python gap", "MFU",
                 "tokens/s", "peak", "activation_grads"):
        assert word in text


def test_the_llmc_mfu_is_of_llmcs_flops():
    # T = 4: L·T != maxT, so llm.c's 6N + 6·L·C·T and PaLM's 6N' + 12·L·C·T differ (at the report
    # fixture's T = 8 they coincide)
    proxy = profiler.TimingBackend(cpu)
    model = GPT2(CFG, backend=proxy)
    model.init_weights(1)
    r = profiler.profile_model(model, proxy, B, 4, steps=1, warmup=1, baseline_steps=1,
                               calibration_shape=(64, 64, 64), model_name="micro")
    assert r["flops_per_token_llmc"] != r["flops_per_token"]
    assert r["mfu_llmc"] == pytest.approx(r["flops_per_token_llmc"] * r["tokens_per_s"] / 1e9 / r["peak_gflops"])
    assert r["mfu"] == pytest.approx(r["flops_per_token"] * r["tokens_per_s"] / 1e9 / r["peak_gflops"])


def test_the_families_table_is_slowest_first(report):
    """report["families"]: each family's ms the sum of its kernels', the slowest family first (the
    table put the fastest first)."""
    sums = {}
    for k in report["kernels"]:
        sums[profiler.family(k["name"])] = sums.get(profiler.family(k["name"]), 0.0) + k["ms"]
    want = sorted(sums, key=lambda f: sums[f], reverse=True)
    assert len(set(sums.values())) == len(sums) > 2   # no ties: one order only
    assert [f["family"] for f in report["families"]] == want
    for f in report["families"]:
        assert f["ms"] == pytest.approx(sums[f["family"]])


REPORT_KEYS = {
    "schema", "model", "config", "num_parameters", "batch", "device", "device_name", "precision", "timer",
    "threads", "threading_layer", "load_average", "warmup", "steps", "compile_ms", "warmup_ms", "compile_by_kernel",
    "step_ms", "step_ms_all", "step_ms_unprofiled", "step_ms_unprofiled_all", "kernel_ms", "kernel_ms_all",
    "host_ms", "tokens_per_s", "tokens_per_s_basis", "flops_per_token", "flops_per_token_formula",
    "flops_per_token_llmc", "flops_per_token_llmc_formula", "kernel_flops_per_token", "achieved_gflops",
    "peak_gflops", "peak_source", "calibration_shape", "reference_peaks", "mfu", "mfu_llmc", "overhead",
    "losses", "kernels", "families", "memory"}
KERNEL_KEYS = {"name", "phase", "calls", "ms", "pct", "flops", "bytes", "gflops", "gbps"}


def test_the_header_and_the_json_say_the_precision(report):
    """The issue's "the profiler header says the precision": the model's, in the JSON and the header
    line (device_name names both GEMMs' kernels whatever the precision)."""
    assert report["precision"] == "fp32"
    header = profiler.format_report(report).splitlines()[1]
    assert header.startswith("device ") and "| precision fp32 |" in header
    assert "| precision bf16 |" in profiler.format_report({**report, "precision": "bf16"}).splitlines()[1]


def test_an_unnamed_model_is_not_called_none(report):
    """profile_model(...) without model_name: the header leaves the name out (it said "model None")."""
    assert profiler.format_report(report).startswith("numbagpt profile | model micro | L=")
    assert profiler.format_report({**report, "model": None}).startswith("numbagpt profile | L=")


def test_profile_model_needs_the_model_on_the_proxy():
    """A model built without backend=proxy ran untimed and gave an empty report (0 calls, a 100% host
    gap); now a ValueError saying how to build it."""
    proxy = profiler.TimingBackend(cpu)
    plain = GPT2(CFG)
    plain.init_weights(1)
    with pytest.raises(ValueError, match=r"the model must be built on the proxy \(GPT2\(config, backend=proxy\)\)"):
        profiler.profile_model(plain, proxy, B, T, steps=1, baseline_steps=0, calibrate=False, peak_gflops=10.0)
    with pytest.raises(ValueError, match="proxy must be a TimingBackend"):
        profiler.profile_model(plain, cpu, B, T, steps=1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(B=2.5), "-b must be an integer, got 2.5"), (dict(T="4"), "-t must be an integer, got '4'"),
    (dict(steps=None), "--steps must be given"), (dict(steps=0), "--steps must be positive, got 0"),
    (dict(warmup=0), "--warmup must be positive, got 0"),
    (dict(baseline_steps=-1), "--baseline-steps must be >= 0, got -1"),
    (dict(seed=-2), "--seed must be >= 0, got -2"), (dict(peak_gflops=0.0), "--peak-gflops must be positive, got 0.0"),
])
def test_profile_model_checks_what_profile_gpt2_checks(kwargs, message):
    """From Python, the flags' checks with their messages (B=2.5 was a TypeError deep in the step)."""
    proxy = profiler.TimingBackend(cpu)
    model = GPT2(CFG, backend=proxy)
    args = {"B": B, "T": T, **kwargs}
    with pytest.raises(ValueError) as e:
        profiler.profile_model(model, proxy, args.pop("B"), args.pop("T"), **{"calibrate": False, **args})
    assert str(e.value) == message


def test_the_kernel_table_keeps_its_columns_for_long_names(report):
    """Every kernel row as wide as the header, the longest names included (crossentropy_forward_backward,
    fused_residual_layernorm_forward pushed their rows' columns out of line)."""
    lines = profiler.format_report(report).splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("kernel "))
    end = lines.index(lines[top + 1], top + 2)   # the dashes under the header, again under the rows
    rows = lines[top + 2:end]
    assert max(len(k["name"]) for k in report["kernels"]) > 22 and rows
    assert {len(line) for line in rows} == {len(lines[top])}, rows


def test_json_schema_is_stable(report):
    data = json.loads(profiler.report_to_json(report))
    assert set(data) == REPORT_KEYS
    assert set(data) == set(profiler.REPORT_KEYS)
    for k in data["kernels"]:
        assert set(k) == KERNEL_KEYS
    assert set(data["config"]) == {"max_seq_len", "vocab_size", "num_layers", "num_heads", "channels",
                                   "padded_vocab_size"}
    assert set(data["batch"]) == {"B", "T", "tokens"}
    assert set(data["overhead"]) == {"proxy_ns_per_call", "calls_per_step", "estimated_ms_per_step",
                                     "measured_ms_per_step"}
    assert set(data["memory"]) == {"estimate", "allocated", "measured"}
    assert set(data["memory"]["measured"]) == {"rss_before_model_bytes", "rss_bytes", "peak_rss_bytes",
                                               "peak_rss_source", "device_used_bytes", "device_total_bytes"}
    assert data["memory"]["measured"]["peak_rss_bytes"] > 0
    assert {f["family"] for f in data["families"]} >= FAMILIES


# ------------------------------------------------------------------------------ the proxy itself

def test_proxy_passes_through_and_records_only_in_a_phase():
    proxy = profiler.TimingBackend(cpu)
    assert proxy.NAME == "cpu" and proxy.synchronize is cpu.synchronize
    a = np.ones(8, dtype=np.float32)
    out = np.zeros(8, dtype=np.float32)
    want = np.zeros(8, dtype=np.float32)
    cpu.gelu_forward(want, a, 8)
    proxy.gelu_forward(out, a, 8)          # no phase: not recorded
    assert proxy.stats == {} and np.array_equal(out, want)
    out[:] = 0
    proxy.phase = "forward"
    proxy.gelu_forward(out, a, 8)
    proxy.gelu_forward(out, a, 8)
    calls, ns, flops, nbytes = proxy.stats[("gelu_forward", "forward")]
    assert (calls, flops, nbytes) == (2, 2 * 9 * 8, 2 * 4 * 2 * 8) and ns > 0
    assert np.array_equal(out, want)
    with pytest.raises(ValueError):
        profiler.TimingBackend(cpu, timer="sundial")
    overhead = profiler.measure_proxy_overhead(n=2000)
    assert 0 <= overhead < 1e5   # ns per call


def test_proxy_overhead_is_the_median_of_the_rounds(monkeypatch):
    """measure_proxy_overhead: per round (proxied - direct) / n ns, and the median of the 5 rounds (the
    fastest round was taken). A clock that advances only when measure_proxy_overhead reads it, by
    amounts set here: direct d, proxied p per round."""
    rounds = [(100, 200), (100, 120), (300, 390), (100, 160), (50, 90)]   # (p - d) / 2: 50, 10, 45, 30, 20
    steps = iter([x for d, p in rounds for x in (7, d, p)])
    now = [0]

    def clock():
        if sys._getframe(1).f_code.co_name == "measure_proxy_overhead":
            now[0] += next(steps)
        return now[0]
    monkeypatch.setattr(profiler.time, "perf_counter_ns", clock)
    got = profiler.measure_proxy_overhead(n=2)
    assert next(steps, None) is None   # every round's three readings taken
    assert got == sorted([50.0, 10.0, 45.0, 30.0, 20.0])[2] == 30.0


def test_calibrate_matmul_counts_the_gemm_and_the_bias(monkeypatch):
    """GFLOP/s = (2·BT·C·OC multiply-adds + BT·OC bias adds) / the best time / 1e9, the FLOPs counted
    here by hand for a call timed at 0.5 s (the count left out the factor 2 of the multiply-adds)."""
    calls = []

    def half_a_second(fn, repeats):
        fn()
        calls.append(repeats)
        return 0.5
    monkeypatch.setattr(profiler, "_best_seconds", half_a_second)
    got = profiler.calibrate_matmul(cpu, shape=(4, 8, 16), repeats=3)
    flops = 2 * 4 * 8 * 16 + 4 * 16   # BT=4, C=8, OC=16: 1024 + 64
    assert calls == [3] and flops == 1088
    assert got == pytest.approx(flops / 0.5 / 1e9, rel=1e-12)


def test_gpu_timers_with_a_fake_device():
    """The CUDA paths without a GPU: 'sync' synchronizes around each call; 'events' records an event
    pair per call and reads them in collect(), after one synchronize, then reuses them."""
    import types
    log = []

    class FakeEvent:
        def __init__(self):
            self.t = None

        def record(self, stream=0):
            log.append("record")
            self.t = len(log)

        def synchronize(self):
            pass

        def elapsed_time(self, end):
            return 0.5 * (end.t - self.t)   # ms

    def kernel(out, inp, N):
        log.append("launch")

    fake = types.SimpleNamespace(NAME="cuda", SIMULATOR=False, TIMER="events", gelu_forward=kernel,
                                 synchronize=lambda: log.append("sync"))
    assert profiler.TimingBackend(fake).timer == "events"   # the backend's TIMER is the default
    fake.TIMER = "sync"
    assert profiler.TimingBackend(fake).timer == "sync"

    proxy = profiler.TimingBackend(fake, timer="sync")
    proxy.phase = "forward"
    proxy.gelu_forward(None, None, 4)
    assert log == ["sync", "launch", "sync"]
    assert proxy.stats[("gelu_forward", "forward")][:1] == [1]

    log.clear()
    proxy = profiler.TimingBackend(fake, timer="events")
    proxy._event = FakeEvent
    proxy.phase = "backward"
    proxy.gelu_forward(None, None, 4)
    proxy.gelu_forward(None, None, 4)
    assert log == ["record", "launch", "record"] * 2   # no synchronize between kernels
    assert proxy.stats[("gelu_forward", "backward")][1] == 0   # not read yet
    assert proxy.total_ns() == 2 * 1_000_000          # 2 calls x 1 ms (end.t - start.t = 2)
    assert log[-1] == "sync" and proxy._pending == [] and len(proxy._events) == 4


# ------------------------------------------------------------------------------ the command line

def test_cli_prints_the_table_and_writes_json(tmp_path, capsys, report):
    from numbagpt.cli.profile import main
    model_file = tmp_path / "micro.bin"
    formats.write_model(model_file, CFG, GPT2(CFG, backend="cpu").parameters_host())
    out_json = tmp_path / "profile.json"
    rc = main(["-e", str(model_file), "-b", "2", "-t", "8", "--steps", "1", "--warmup", "1",
               "--baseline-steps", "0", "--no-calibrate", "--peak-gflops", "10", "--json", str(out_json)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "kernel" in text and "matmul_backward" in text and "sum of kernels" in text
    assert "memory (MiB):" in text
    data = json.loads(out_json.read_text())
    assert set(data) == REPORT_KEYS
    assert data["peak_gflops"] == 10.0 and data["step_ms_unprofiled"] is None
    assert data["tokens_per_s_basis"] == "profiled step"
    assert data["batch"] == {"B": 2, "T": 8, "tokens": 16}


def test_cli_refuses_a_json_path_it_cannot_write_before_profiling(tmp_path, capsys, monkeypatch):
    """--json into a missing directory, or onto a directory: one line naming the path and the flag,
    before any step runs (it failed after the whole profile)."""
    from numbagpt import profiler as prof
    from numbagpt.cli.profile import main
    monkeypatch.setattr(prof, "profile_model", lambda *a, **k: pytest.fail("profiled before checking --json"))
    for path, why in ((tmp_path / "missing" / "p.json", "no such directory"), (tmp_path, "is a directory")):
        assert main(["-b", "2", "-t", "8", "--steps", "1", "--json", str(path)]) == 1
        err = capsys.readouterr().err
        assert f"{path}: cannot write it (--json): {why}" in err and len(err.strip().splitlines()) == 1, err


def test_cli_bad_arguments_give_clear_errors(tmp_path, capsys):
    from numbagpt.cli.profile import main
    with pytest.raises(SystemExit) as e:
        main(["-b", "0"])
    assert "-b must be positive, got 0" in str(e.value)
    with pytest.raises(SystemExit) as e:
        main(["--steps", "-1"])
    assert "--steps must be positive" in str(e.value)
    with pytest.raises(SystemExit):
        main(["--device", "tpu"])
    assert "invalid choice" in capsys.readouterr().err
    assert main(["-e", str(tmp_path / "nope.bin")]) == 1
    assert "nope.bin: no such model file or directory (-e)" in capsys.readouterr().err
    model_file = tmp_path / "micro.bin"
    formats.write_model(model_file, CFG, np.zeros(30080, dtype=np.float32))
    assert main(["-e", str(model_file), "-t", "17"]) == 1
    assert "exceeds the model's max_seq_len 16" in capsys.readouterr().err


def test_cli_profiles_the_model_it_was_given(tmp_path, capsys, monkeypatch):
    """-t at the model's maxT is taken (maxT + 1 is refused, above); -r reaches the model profiled."""
    from numbagpt import profiler as prof
    from numbagpt.cli.profile import main
    model_file = tmp_path / "micro.bin"
    formats.write_model(model_file, CFG, np.zeros(30080, dtype=np.float32))
    profiled = []

    def profile_model(model, proxy, B, T, **kwargs):
        profiled.append((model.recompute, B, T))
        raise RuntimeError("profiled")
    monkeypatch.setattr(prof, "profile_model", profile_model)
    for r in ("0", "2"):
        assert main(["-e", str(model_file), "-b", "2", "-t", str(CFG.max_seq_len), "-r", r]) == 1
        assert capsys.readouterr().err == "profile_gpt2: error: profiled\n"
    assert profiled == [(0, 2, CFG.max_seq_len), (2, 2, CFG.max_seq_len)]


def test_bin_wrapper_runs():
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bin", "profile_gpt2"), "--help"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0 and "--peak-gflops" in res.stdout


def test_the_jit_time_is_the_first_step_less_the_mean_step(report):
    """The header's JIT estimate is first step − mean timed step (it said the whole first step)."""
    header = profiler.format_report({**report, "compile_ms": 650.0, "step_ms": 250.0}).splitlines()[2]
    assert header.startswith("first step: 0.65 s, of which about 0.40 s JIT compile or cache load"), header


def test_a_load_average_over_the_cores_is_a_warning(report):
    """A 1-minute load above the core count warns that the timings are noisy (at 2× the cores only, it
    said nothing at 1.25×)."""
    def warned(load):
        text = profiler.format_report({**report, "load_average": {**report["load_average"], "1min": load, "cores": 4}})
        return [line for line in text.splitlines() if line.startswith("WARNING: load average")]
    assert warned(5.0) == ["WARNING: load average 5.0 on 4 cores: other processes compete for the CPU, the timings "
                           "are noisy (compare the min step with the mean)"]
    assert warned(3.0) == [] and warned(4.0) == []
