"""Pieces side by side: a failing piece stops the run naming itself and its log; a piece out of GPU memory ends
the command with one line that says what to do."""
import pytest
import torch

from statex.cli import main
from statex.compare.parallel import run_tasks


def square(x):
    return x * x


def out_of_gpu_memory(_):
    raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1024.00 MiB. GPU 0 has 272 MiB free.")


@pytest.mark.parametrize("jobs", [1, 2])  # in this process; in worker processes (with the piece's log)
def test_a_failure_names_its_piece(tmp_path, jobs):
    with pytest.raises(torch.OutOfMemoryError) as caught:
        run_tasks({"ok": (square, (2,)), "mamba2/lpt/seed1/train": (out_of_gpu_memory, (0,))}, jobs=jobs,
                  progress=False, log_dir=tmp_path)
    notes = caught.value.__notes__
    assert len(notes) == 1 and "in piece mamba2/lpt/seed1/train" in notes[0]
    assert jobs == 1 or str(tmp_path) in notes[0]


def test_out_of_gpu_memory_is_one_line_with_what_to_do(monkeypatch, capsys):
    error = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1024.00 MiB.\nmore detail")
    error.add_note("in piece gla/base/train (log: out/logs/gla_base.log)")

    def failing(args):
        raise error

    import statex.cli as cli

    parser = cli.build_parser()
    monkeypatch.setattr(cli, "build_parser", lambda: _with_func(parser, failing))
    assert main(["inspect", "anything"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("statex: error: out of GPU memory in piece gla/base/train")
    assert "--resume" in err[0] and "more detail" not in err[0]


def _with_func(parser, func):
    parse = parser.parse_args

    def parse_args(argv=None):
        args = parse(argv)
        args.func = func
        return args

    parser.parse_args = parse_args
    return parser
