"""Every bad input a user might type, through the real command line (issue 17): each must exit 2 with a
message naming the field or flag and how to fix it, print no traceback, never hang, and start nothing
expensive (no ground-truth folder).  One row per input: (arguments, text the error must contain)."""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import pytest

from tdabench import cli

D = ["run", "--task", "digits", "--method", "gradsim"]          # a valid command to break one piece of
R = ["run", "--task", "regression", "--method", "gradsim"]
H = ["run", "--task", "hierarchy", "--method", "gradsim"]
L = ["run", "--task", "tinylm", "--method", "gradsim"]
C = ["run", "--task", "cifar10", "--method", "gradsim"]
S = ["sweep", "--task", "digits", "--method", "gradsim"]


def _set(base: list[str], *pairs: str) -> list[str]:
    return base + [a for p in pairs for a in ("--set", p)]


CASES: list[tuple[list[str], str]] = [
    # names
    (["run", "--task", "digits", "--method", "gradsm"], "Did you mean 'gradsim'"),
    (["run", "--task", "digit", "--method", "gradsim"], "Did you mean 'digits'"),
    (["run", "--suite", "kreer2025-cifar"], "Did you mean 'kreer2025-cifar10'"),
    (["run", "--task", "digits", "--method", ","], "names no method"),
    (["run", "--task", "digits", "--method", ""], "--method"),
    (["run", "--task", "digits", "--method", "gradsim", "--metric", "ldss"], "Did you mean 'lds'"),
    (["evaluate", "--metric", "ldss"], "Did you mean 'lds'"),
    (["evaluate", "--task", "digitz"], "Did you mean 'digits'"),
    (["stagewise", "--task", "digits", "--method", "gradsm"], "Did you mean 'gradsim'"),
    (["kernel", "--task", "digits", "--method", "gradsm"], "Did you mean 'gradsim'"),
    (["sweep", "--task", "digits", "--method", "gradsm", "--grid", "proj_dim=0,8"], "Did you mean 'gradsim'"),
    (["scaling", "--task", "digitz", "--method", "gradsim", "--vary", "task.n_train=100,200"], "Did you mean 'digits'"),
    # --set syntax and keys
    (_set(D, "task.n_trian=5"), "valid keys: task.n_train"),
    (_set(D, "oops"), "SCOPE.KEY=VALUE"),
    (_set(D, "=3"), "SCOPE.KEY=VALUE"),
    (_set(D, "if.damping=1"), "match nothing"),
    (_set(D, "gradsim.nosuch=1"), "gradsim.nosuch"),
    (_set(D, "gt.nosuch=1"), "gt.nosuch"),
    # task fields: types and ranges
    (_set(D, "task.n_train=many"), "task.n_train='many'"),
    (_set(D, "task.n_train=1.5"), "task.n_train"),
    (_set(D, "task.n_train=0"), "task.n_train=0: must be an integer ≥ 2"),
    (_set(D, "task.n_train=-5"), "task.n_train=-5"),
    (_set(D, "task.n_train=1700"), "task.n_train=1700: must be at most 1597"),
    (_set(D, "task.n_query=0"), "task.n_query=0"),
    (_set(D, "task.epochs=0"), "task.epochs=0"),
    (_set(D, "task.batch_size=0"), "task.batch_size=0"),
    (_set(D, "task.hidden=0"), "task.hidden=0"),
    (_set(D, "task.lr=nan"), "task.lr=nan"),
    (_set(D, "task.lr=inf"), "task.lr=inf"),
    (_set(D, "task.lr=-1"), "task.lr=-1"),
    (_set(D, "task.weight_decay=-1"), "task.weight_decay=-1"),
    (_set(R, "task.kind=quadratic"), "task.kind='quadratic'"),
    (_set(R, "task.optimizer=adam"), "task.optimizer='adam'"),
    (_set(R, "task.dim=0"), "task.dim=0"),
    (_set(R, "task.steps=0"), "task.steps=0"),
    (_set(R, "task.noise=-1"), "task.noise=-1"),
    (_set(R, "task.l2=-0.5"), "task.l2=-0.5"),
    (_set(H, "task.levels=1"), "task.levels=1"),
    (_set(H, "task.branching=1"), "task.branching=1"),
    (_set(H, "task.init_std=0"), "task.init_std=0"),
    (_set(L, "task.context_length=1"), "task.context_length=1"),
    (_set(L, "task.vocab_size=100000"), "task.vocab_size=100000"),
    (_set(L, "task.heads=3"), "task.heads=3: must be a divisor of task.hidden=64"),
    (_set(L, "task.repeat_fraction=2"), "task.repeat_fraction=2"),
    (_set(L, "task.micro_batch=0"), "task.micro_batch=0"),
    (_set(C, "task.image_size=64"), "task.image_size=64"),
    (_set(C, "task.widths=1,2"), "task.widths"),
    (_set(C, "task.momentum=1.5"), "task.momentum=1.5"),
    (_set(C, "task.n_query=20000"), "task.n_query=20000"),
    # ground-truth fields
    (_set(D, "gt.alpha=1.5"), "strictly between 0 and 1"),
    (_set(D, "gt.alpha=0"), "gt.alpha"),
    (_set(D, "gt.alpha=abc"), "gt.alpha"),
    (_set(D, "gt.num_subsets=0"), "gt.num_subsets"),
    (_set(D, "gt.num_subsets=-3"), "gt.num_subsets"),
    (_set(D, "gt.retrain_seeds=0"), "gt.retrain_seeds"),
    (_set(D, "gt.kind=bogus"), "gt.kind"),
    # method fields
    (_set(D, "gradsim.proj_dim=-5"), "gradsim.proj_dim=-5"),
    (_set(["run", "--task", "digits", "--method", "bif"], "bif.chains=0"), "bif.chains=0"),
    (_set(["run", "--task", "digits", "--method", "bif"], "bif.epsilon=-1"), "bif.epsilon=-1"),
    (_set(["run", "--task", "digits", "--method", "bif"], "bif.nbeta=nan"), "bif.nbeta=nan"),
    (_set(["run", "--task", "digits", "--method", "bif"], "bif.patterns=(("), "bif.patterns"),
    (_set(["run", "--task", "digits", "--method", "trak"], "trak.proj_dim=0"), "trak.proj_dim=0"),
    (_set(["run", "--task", "digits", "--method", "if"], "if.curvature=exact"), "gauss_newton, hessian"),
    # flags
    (D + ["--threads", "0"], "--threads 0: must be at least 1"),
    (D + ["--threads", "-2"], "--threads -2"),
    (D + ["--seeds", "0"], "--seeds"),
    (D + ["--seeds", "-1"], "--seeds"),
    (D + ["--seeds", "a,b"], "--seeds"),
    (D + ["--device", "tpu"], "--device 'tpu'"),
    (D + ["--device", "cuda:abc"], "--device"),
    (D + ["--results-dir", "{tmp}/a-file/sub"], "--results-dir"),
    (D + ["--ray-address", "127.0.0.1:1"], "--ray-address 127.0.0.1:1: no Ray cluster answers there"),
    (D + ["--ray-address", "nonsense"], "--ray-address 'nonsense': expected HOST:PORT"),
    (S + ["--grid", "proj_dim=0,8", "--samples", "-1"], "--samples -1"),
    (S + ["--grid", "proj_dim=0,8", "--samples", "many"], "--samples: invalid int value"),
    (S + ["--grid", "proj_dim=abc,8"], "gradsim.proj_dim='abc'"),
    (S + ["--grid", "nosuch=1,2"], "nosuch"),
    (S + ["--grid", "proj_dim="], "proj_dim"),
    (["stagewise", "--task", "digits", "--method", "gradsim", "--checkpoints", "0"], "--checkpoints"),
    (["stagewise", "--task", "digits", "--method", "gradsim", "--checkpoints", "-1"], "--checkpoints"),
    (["scaling", "--task", "digits", "--method", "gradsim", "--vary", "task.n_train="], "--vary"),
    (["scaling", "--task", "digits", "--method", "gradsim", "--vary", "task.n_train=0,100"], "task.n_train=0"),
    (["leaderboard", "--metric", "ldss"], "ldss"),
]


def _alarm(*_: Any) -> None:
    raise TimeoutError("the command hung")


@pytest.mark.parametrize("args, message", CASES, ids=[" ".join(a)[:80] for a, _ in CASES])
def test_bad_input_exits_2_naming_the_problem(args: list[str], message: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "a-file").write_text("")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--results-dir" not in argv:
        argv += ["--results-dir", str(tmp_path / "results")]
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(60)
    try:
        code = cli.main(argv)
    except SystemExit as done:               # argparse's own usage errors (a flag's type) exit here
        code = done.code
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    out = capsys.readouterr()
    assert "Traceback" not in out.err + out.out
    assert code == 2, (code, out.err[-500:])
    assert message in out.err, out.err[-500:]
    assert not (tmp_path / "results" / "ground_truth").exists()       # nothing expensive started


def test_the_table_is_long_enough() -> None:
    assert len(CASES) >= 60 and len({tuple(a) for a, _ in CASES}) == len(CASES)
