"""resnet_backbone.utils.cli: the one entry point of the tools' errors, and the KEY VALUE override checks."""
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resnet_backbone.checkpoint import CheckpointError
from resnet_backbone.config import ConfigError
from resnet_backbone.data.errors import DatasetError
from resnet_backbone.engine.trainer import NonFiniteLossError
from resnet_backbone.utils.cli import (
    OverridesArgumentParser,
    ToolError,
    ToolInputNotFound,
    is_library_error,
    misplaced_flags,
    positive_int,
    run_tool,
)
from resnet_backbone.utils.precision import PrecisionError

LIBRARY_ERRORS = [
    ConfigError("command-line override: unknown config key 'SOLVER.MAX_ITERS'; did you mean 'SOLVER.MAX_ITER'?"),
    DatasetError("image file does not exist", file="a/b.png", record=3, field="file_name"),
    CheckpointError("'w.pth': not a checkpoint"),
    NonFiniteLossError("iteration 7: loss_cls is nan"),
    PrecisionError("SOLVER.AMP.ENABLED True: this CPU has no native bfloat16"),
    ToolError("--output 'x' is the --input folder 'x'"),
    ToolInputNotFound("--input: no such file or directory: nope"),
]


def _raiser(exc):
    def main(argv=None):
        raise exc

    return main


@pytest.mark.parametrize("exc", LIBRARY_ERRORS, ids=lambda e: type(e).__name__)
def test_library_error_is_one_line_exit_2(exc, capsys, monkeypatch):
    monkeypatch.delenv("RB_TRACEBACK", raising=False)
    assert is_library_error(exc)
    assert run_tool(_raiser(exc), prog="tool.py") == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert err == [f"tool.py: error: {exc}"]
    assert "Traceback" not in captured.err and captured.out == ""


@pytest.mark.parametrize("exc", [RuntimeError("boom"), KeyError("k"), ValueError("plain"), FloatingPointError("x"),
                                 FileNotFoundError("f")], ids=lambda e: type(e).__name__)
def test_a_plain_bug_keeps_its_traceback(exc, capsys):
    assert not is_library_error(exc)
    with pytest.raises(type(exc)) as info:
        run_tool(_raiser(exc), prog="tool.py")
    assert info.value is exc
    assert "error:" not in capsys.readouterr().err  # nothing printed by the wrapper: Python prints the traceback


def test_rb_traceback_env_keeps_the_traceback_of_a_library_error(monkeypatch):
    monkeypatch.setenv("RB_TRACEBACK", "1")
    with pytest.raises(ConfigError):
        run_tool(_raiser(ConfigError("bad key")), prog="tool.py")


def test_keyboard_interrupt_is_130_and_one_line(capsys):
    assert run_tool(_raiser(KeyboardInterrupt()), prog="tool.py") == 130
    assert capsys.readouterr().err.strip().splitlines() == ["tool.py: interrupted"]


def test_an_explained_interrupt_keeps_its_explanation(capsys):
    """The checkpointer explains an interrupted save (which file is intact): the wrapper must not drop it."""
    msg = "checkpoint save interrupted while writing 'b.pth': the previous checkpoint 'a.pth' is intact"
    assert run_tool(_raiser(KeyboardInterrupt(msg)), prog="tool.py") == 130
    assert capsys.readouterr().err.strip().splitlines() == [f"tool.py: interrupted: {msg}"]


def test_return_values_become_the_exit_status():
    assert run_tool(lambda argv: None) == 0
    assert run_tool(lambda argv: {"bbox": {}}) == 0
    assert run_tool(lambda argv: ["a.png"]) == 0
    assert run_tool(lambda argv: 3) == 3
    assert run_tool(lambda argv: True) == 0
    seen = []
    run_tool(lambda argv: seen.append(argv), argv=["--x"])
    assert seen == [["--x"]]


def test_system_exit_passes_through():
    with pytest.raises(SystemExit) as info:
        run_tool(_raiser(SystemExit(2)))
    assert info.value.code == 2


def test_error_from_a_dataloader_worker_keeps_only_the_original_message(capsys):
    """torch re-raises a worker's exception as type(e)(text with the worker's traceback): one line again."""
    from torch.utils.data import DataLoader, Dataset

    class Bad(Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            raise DatasetError("image is 1x1; both sides must be >= 2 pixels", file="x.png", record=i, field="size")

    def main(argv=None):
        next(iter(DataLoader(Bad(), num_workers=1)))

    assert run_tool(main, prog="train_net.py") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("train_net.py: error: file 'x.png', record 0, field 'size': image is 1x1")
    assert err[0].endswith("(raised in a DataLoader worker)")


@pytest.mark.parametrize("code, status, line", [
    ("raise ConfigError('unknown config key X')", 2, "prog.py: error: unknown config key X"),
    ("raise RuntimeError('a real bug')", 1, "RuntimeError: a real bug"),
    ("raise KeyboardInterrupt", 130, "prog.py: interrupted"),
])
def test_exit_status_and_stderr_of_a_real_process(code, status, line, tmp_path):
    script = tmp_path / "prog.py"
    script.write_text("import sys\nfrom resnet_backbone.config import ConfigError\n"
                      "from resnet_backbone.utils.cli import run_tool\n\n"
                      f"def main(argv=None):\n    {code}\n\n"
                      "if __name__ == '__main__':\n    sys.exit(run_tool(main))\n")
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == status, r.stderr
    assert r.stderr.strip().splitlines()[-1] == line
    assert ("Traceback" in r.stderr) == (status == 1)


def test_positive_int():
    assert positive_int("3") == 3
    for bad in ("0", "-2", "x", "1.5"):
        with pytest.raises(Exception, match="positive integer"):
            positive_int(bad)


def _parser():
    p = OverridesArgumentParser(prog="t.py")
    p.add_argument("--config-file", default="")
    p.add_argument("--eval-only", action="store_true")
    p.add_argument("--num-gpus", type=int, default=1)
    p.add_argument("opts", nargs="...", default=None)
    return p


@pytest.mark.parametrize("argv, named", [
    (["OUTPUT_DIR", "x", "--eval-only"], "'--eval-only' is a flag placed after the KEY VALUE config overrides"),
    (["SEED", "1", "--num-gpus", "2"], "'--num-gpus' is a flag"),
    (["SEED", "1", "--num-gpus=2"], "'--num-gpus=2' is a flag"),
    (["SEED", "1", "--eval"], "'--eval' is a flag"),  # an abbreviation argparse would accept
    (["SEED", "1", "--evl-only"], "'--evl-only' stands where a config key should be"),
])
def test_flag_after_overrides_is_named(argv, named, capsys):
    with pytest.raises(SystemExit) as info:
        _parser().parse_args(["--config-file", "c.yaml", *argv])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "before" in err


def test_values_that_start_with_a_dash_are_not_flags():
    args = _parser().parse_args(["--eval-only", "SEED", "-1", "SOLVER.BASE_LR", "-1e-3"])
    assert args.opts == ["SEED", "-1", "SOLVER.BASE_LR", "-1e-3"] and args.eval_only
    assert misplaced_flags(["--", "SEED", "-1"], ["--eval-only"]) == []


_keys = st.from_regex(r"[A-Z][A-Z_]{0,6}(\.[A-Z][A-Z_]{0,6}){0,2}", fullmatch=True)
_values = st.one_of(st.integers(-10**6, 10**6).map(str), st.floats(allow_nan=False).map(repr),
                    st.text("abcxyz/._()[], '", max_size=12))


@settings(max_examples=150, deadline=None)
@given(pairs=st.lists(st.tuples(_keys, _values), max_size=6), flag=st.sampled_from(["--eval-only", "--num-gpus"]),
       where=st.integers(0, 12))
def test_fuzz_overrides_flags_found_exactly(pairs, flag, where):
    """Any KEY VALUE list passes; the same list with one of the tool's flags inserted anywhere names that flag."""
    opts = [t for kv in pairs for t in kv]
    known = ["--config-file", "--eval-only", "--num-gpus"]
    assert misplaced_flags(opts, known) == []
    with_flag = opts[:where] + [flag] + opts[where:]
    assert misplaced_flags(with_flag, known) == [(flag, True)]
