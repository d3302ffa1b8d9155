"""Every numeric flag of every command, walked with NaN, ±inf, 0, −1 and a huge value: each is either
refused in one line that names the flag (no traceback, before any work), or accepted because its
documented range admits it. A new int or float flag without a declared range fails here."""
import dataclasses
import math

import pytest

from numbagpt.cli import numeric_flags
from numbagpt.flags import Check, check_value
from numbagpt.train import TrainConfig

VALUES = ("nan", "inf", "-inf", "0", "-1", "1e30", str(10**12))

# what each command needs besides the flag under test (fake files: a refused value stops first)
REQUIRED = {"test_gpt2": ["-e", "missing.bin", "-s", "missing_state.bin"], "eval_gpt2": ["--hellaswag", "x.bin"],
            "plot_log": ["missing.log"]}


def commands():
    from numbagpt.cli import eval as eval_cli, plot, prepare, profile, sample, test
    return {"test_gpt2": test, "profile_gpt2": profile, "sample_gpt2": sample, "eval_gpt2": eval_cli,
            "prepare_data": prepare, "plot_log": plot}


def train_flags():
    """[(flag, type, Check, choices)] of bin/train_gpt2 (TrainConfig's fields)."""
    return [(f.metadata["flags"][0], f.type, f.metadata["check"], f.metadata["choices"])
            for f in dataclasses.fields(TrainConfig) if f.type in (int, float)]


def accepted(kind, check, choices, text):
    """True when the documented range admits `text` (the independent expectation)."""
    try:
        value = kind(text) if kind is float else int(text)
    except ValueError:
        return False   # argparse refuses it: not an int
    if kind is float and not math.isfinite(value):
        return False
    if choices is not None:
        return value in choices
    return check is None or check.holds(value)


def refused_in_one_line(capsys, main, argv, flag):
    with pytest.raises(SystemExit) as e:
        main(argv)
    text = (str(e.value.code) if isinstance(e.value.code, str) else "") + capsys.readouterr().err
    lines = [line for line in text.splitlines() if line.strip()]
    assert len(lines) == 1 and flag.lstrip("-") in lines[0] and "error" in lines[0], (argv, text)
    assert "Traceback" not in text


def test_every_numeric_flag_declares_its_range():
    missing = [f"train_gpt2 {flag}" for flag, kind, check, choices in train_flags() if check is None and not choices]
    for name, module in commands().items():
        missing += [f"{name} {a.option_strings[0]}" for a, check in numeric_flags(module.build_parser())
                    if check is None and not a.choices]
    assert missing == []


@pytest.mark.parametrize("value", VALUES)
def test_train_flags(value, capsys):
    from numbagpt.cli.train import main, parse_config
    walked = 0
    for flag, kind, check, choices in train_flags():
        argv = [flag, value]
        if accepted(kind, check, choices, value):
            try:
                parse_config(argv)   # the documented acceptance: parsed and checked, nothing run
            except SystemExit:       # ... unless with the other flags' defaults it makes no sense (-m 0)
                refused_in_one_line(capsys, main, argv, flag)
        else:
            refused_in_one_line(capsys, main, argv, flag)
        walked += 1
    assert walked >= 20


@pytest.mark.parametrize("command", ["test_gpt2", "profile_gpt2", "sample_gpt2", "eval_gpt2", "prepare_data",
                                     "plot_log"])
@pytest.mark.parametrize("value", VALUES)
def test_command_flags(command, value, capsys):
    module = commands()[command]
    parser = module.build_parser()
    for action, check in numeric_flags(parser):
        flag = action.option_strings[0]
        argv = REQUIRED.get(command, []) + [flag, value]
        if accepted(action.type, check, action.choices, value):
            args = parser.parse_args(argv)   # the documented acceptance
            check_value(flag, getattr(args, action.dest), action.type, check)
        else:
            refused_in_one_line(capsys, module.main, argv, flag)


@pytest.mark.parametrize("low_open", [False, True])
@pytest.mark.parametrize("high_open", [False, True])
def test_the_check_holds_inside_and_at_a_closed_bound_only(low_open, high_open):
    """[0, 1], (0, 1], [0, 1), (0, 1) at both bounds, inside and outside; their words."""
    check = Check(low=0, high=1, low_open=low_open, high_open=high_open)
    assert [check.holds(v) for v in (-0.5, 0, 0.5, 1, 1.5)] == [False, not low_open, True, not high_open, False]
    assert check.describe() == f"in {'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    assert Check(high=1, high_open=high_open).holds(1) is not high_open


def test_betas_are_refused_at_one():
    """AdamW's betas lie in [0, 1): at 1, m or v never forget and the bias correction divides by 0."""
    assert TrainConfig(beta1=0.0, beta2=0.0)
    for flag, kwargs in (("--beta1", dict(beta1=1.0)), ("--beta2", dict(beta2=1.0))):
        with pytest.raises(ValueError, match=rf"^{flag} must be in \[0, 1\), got 1.0$"):
            TrainConfig(**kwargs)


def test_the_check_itself():
    assert Check(low=0, high=1, low_open=True).holds(1) and not Check(low=0, low_open=True).holds(0)
    with pytest.raises(ValueError, match="-l must be a finite number, got nan"):
        check_value("-l", float("nan"), float)
    with pytest.raises(ValueError, match="-b must be an integer, got 3.7"):
        check_value("-b", 3.7, int)


def test_train_combinations():
    with pytest.raises(ValueError, match="-m 0 evaluates no batches"):
        TrainConfig(val_every=1, val_batches=0)
    assert TrainConfig(val_every=0, val_batches=0)
    assert any("never reaches -l 0.003" in w for w in TrainConfig(max_steps=5).warnings())
    assert any("reaches -l 0.003 only at the last step" in w for w in TrainConfig(max_steps=10).warnings())
    assert not any("reaches -l" in w for w in TrainConfig(max_steps=50).warnings())
    assert any("Numba runs at most" in w for w in TrainConfig(omp_threads=1000).warnings())   # Numba imported
    with pytest.MonkeyPatch.context() as mp:   # a command, before Numba is imported (it raises the cap then)
        mp.setattr("numbagpt.train.config.thread_cap", lambda: None)
        assert any("cores" in w for w in TrainConfig(omp_threads=1000).warnings())
    def rounded_alone(**flags):   # --save-precision bf16 and no checkpoint at the last step
        return any("final weights are kept rounded to bf16 alone" in w
                   for w in TrainConfig(save_precision="bf16", **flags).warnings())
    assert rounded_alone() and rounded_alone(max_steps=10, checkpoint_every=3)
    assert not rounded_alone(max_steps=10, checkpoint_every=5) and not rounded_alone(output_dir="")
    with pytest.raises(ValueError, match="-b must be positive, got 0"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="-b must be an integer"):
        TrainConfig(batch_size=2.5)


def test_none_only_where_it_is_the_default():
    """TrainConfig(field=None) is refused, naming the flag, unless None is the field's default (a flag
    not given, e.g. --layers: the model's)."""
    for f in dataclasses.fields(TrainConfig):
        if f.default is None:
            assert getattr(TrainConfig(**{f.name: None}), f.name) is None
            continue
        with pytest.raises(ValueError) as e:
            TrainConfig(**{f.name: None})
        flag = f.metadata["flags"]
        assert any(str(e.value).startswith(name + " must be ") for name in flag), (f.name, str(e.value))
    with pytest.raises(ValueError, match=r"^--precision must be one of fp32, bf16, got None$"):
        TrainConfig(precision=None)


def test_help_states_every_default():
    """Each command's --help gives the default of every option that has one (docs/training.md: "--help
    states every default"), whatever else its help text says (it once hid --save-precision's because
    that text says "by default" of llm.c's trainer)."""
    import argparse

    from numbagpt.cli import hf, train
    parsers = {name: module.build_parser() for name, module in commands().items()}
    parsers.update(train_gpt2=train.build_parser(), export_hf=hf.build_export_parser(),
                   import_hf=hf.build_import_parser())
    for name, parser in parsers.items():
        formatter = parser._get_formatter()
        for a in parser._actions:
            if not a.option_strings or a.default in (None, argparse.SUPPRESS) or a.help == argparse.SUPPRESS:
                continue
            if isinstance(a, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse._HelpAction)):
                continue
            text = formatter._get_help_string(a) % dict(default=a.default)
            assert "(default" in text, (name, a.option_strings, text)
