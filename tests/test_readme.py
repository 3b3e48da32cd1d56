"""The README's runnable examples ("Ten lines", "Instruments"), run as real scripts the way a new
user would run them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"

# The block leaves its steps to the reader; these are the least that makes it run. Each call is
# logged to calls.txt, so a test can see which steps ran in which run of the script.
STEPS = """
def _called(name):
    with open("calls.txt", "a") as calls:
        calls.write(name + "\\n")


def llm_plan(topic):
    _called("llm_plan")
    return [f"{topic} basics", f"{topic} in practice"]


def retrieve(query):
    _called("retrieve")
    return f"notes on {query}"


def synthesize(docs, verdict):
    _called("synthesize")
    return f"{len(docs)} docs, approved: {verdict['ok']}"

"""


def block(heading: str, language: str = "python") -> str:
    """The first code block in ``language`` after the README's ``## heading``."""
    text = README.read_text()
    section = text[text.index(f"\n## {heading}\n") :]
    match = re.search(rf"^```{language}\n(.*?)^```$", section, re.M | re.S)
    assert match is not None, f"no {language} block under ## {heading}"
    return match.group(1)


def run_block(heading: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run the first python block after the README's ``heading`` line as a script in
    ``tmp_path``."""
    text = README.read_text()
    section = text[text.index(f"\n{heading}\n") :]
    match = re.search(r"^```python\n(.*?)^```$", section, re.M | re.S)
    assert match is not None, f"no python block under {heading}"
    script = tmp_path / "example.py"
    script.write_text(match.group(1))
    return subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )


def ten_lines_block() -> str:
    return block("Ten lines")


def test_ten_lines_example_runs_twice_without_a_traceback(tmp_path: Path) -> None:
    """The README's ten-line example, saved as a script (with minimal steps) and run twice in
    the same folder: both runs exit 0 and print the result; the second finds run r-42 in the
    SQLite file the first left behind and prints its recorded result without running a step."""
    script = tmp_path / "research.py"
    script.write_text(STEPS + ten_lines_block())
    env = {k: v for k, v in os.environ.items() if k != "CORO_DURABLE_STORE"}
    outputs, calls = [], []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=60,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "Traceback" not in done.stderr
        outputs.append(done.stdout)
        calls.append((tmp_path / "calls.txt").read_text().split())
    assert outputs == ["2 docs, approved: True\n"] * 2
    assert sorted(calls[0]) == ["llm_plan", "retrieve", "retrieve", "synthesize"]
    assert calls[1] == calls[0]  # the second run executed no step: the run persisted
    assert (tmp_path / "runs.db").exists()


def test_fake_clock_example_runs_in_well_under_a_day(tmp_path: Path) -> None:
    """The README's FakeClock example, run as a script: the one-day timer fires when the clock
    is advanced, and the script prints the clock's date within seconds."""
    done = run_block("### Timers in tests: `FakeClock`", tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "sent at 2030-01-02"


def test_instruments_example_prints_what_the_readme_says(tmp_path: Path) -> None:
    """The README's instrument example, saved as a script and run: it prints each step attempt
    (the failed first one and the retry), the run's end and the result, exactly as shown."""
    script = tmp_path / "instruments.py"
    script.write_text(block("Instruments"))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, cwd=tmp_path, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == block("Instruments", language="text")


def test_send_example_prints_what_the_readme_says(tmp_path: Path) -> None:
    """The README's cd.send example, run as a script: the writer's send reaches the reviewer,
    which completes with the draft."""
    done = run_block("### Messages between runs: `cd.send`", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == "sent\nreviewed: chapter 1\n"


def test_first_example_prints_what_the_readme_says(tmp_path: Path) -> None:
    """The README's cd.first example, run as a script: the signalled run is approved, the other
    escalates when its timer wins the race."""
    done = run_block("### Races: `cd.first`", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == "approved by ada\nescalated to the finance team\n"


def test_tags_example_prints_what_the_readme_says(tmp_path: Path) -> None:
    """The README's tags example, run as a script: list_runs(tags=) finds acme's two runs."""
    done = run_block("### Tags", tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout == "s-2 acme: repor\ns-0 acme: repor\n"
