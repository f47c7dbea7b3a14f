"""The README's quickstart sample is what its command prints: the command is read from the README, run
from an empty results directory, and its output compared line by line with the sample (timings and
peak memory masked: they are the machine's, not the code's)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
COMMAND = re.compile(r"\.venv/bin/tdabench (run --task digits [^`\n]*?)\s*$", re.M)


def _sample() -> list[str]:
    """The code block that follows the quickstart's "prints" paragraph."""
    text = README.read_text()
    start = text.index("```\ndigits — ground truth", text.index("## Quickstart"))
    return text[start + 4 : text.index("```", start + 4)].rstrip("\n").split("\n")


def _mask(line: str) -> str:
    """A table row with its last three columns (fit s, score s, peak MB) replaced by '#'."""
    parts = line.split()
    if len(parts) >= 4 and all(re.fullmatch(r"[\d.]+", p) for p in parts[-3:]):
        parts[-3:] = ["#", "#", "#"]
    return " ".join(parts)


def test_the_quickstart_prints_the_readme_sample(tmp_path):
    args = COMMAND.search(README.read_text()).group(1).split()
    run = subprocess.run([sys.executable, "-c", "import sys; from tdabench.cli import main; sys.exit(main())", *args,
                          "--results-dir", str(tmp_path / "results")], cwd=tmp_path, capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    printed = run.stdout.rstrip("\n").replace(str(tmp_path / "results"), "results").split("\n")
    assert [_mask(x) for x in printed] == [_mask(x) for x in _sample()]


def test_every_benchmark_block_is_that_benchmarks_written_output():
    """A ``<!-- bench:NAME -->`` block (README or docs page) holds exactly what ``benchmarks/NAME.py --readme`` wrote into
    ``results/benchmarks/NAME.md`` (its first part): a figure typed into the README fails here."""
    text = "".join(p.read_text() for p in (README, *sorted((README.parent / "docs").glob("*.md"))))
    blocks = re.findall(r"<!-- bench:([\w-]+) -->\n(.*?)<!-- /bench:\1 -->", text, re.S)
    assert {name for name, _ in blocks} >= {"defaults_unseen", "if_curvature"}
    for name, body in blocks:
        written = (README.parent / "results" / "benchmarks" / f"{name}.md").read_text()
        assert body.strip() and written.startswith(body.rstrip("\n") + "\n\n"), name
