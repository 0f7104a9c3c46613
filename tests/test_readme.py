"""The README prints only numbers that a committed results file holds: every decimal in its
findings is in a table, claim or record under results/, made by the command the README names."""
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def findings() -> str:
    text = (REPO / "README.md").read_text()
    return text[text.index("## What it finds"):text.index("## Run a preset")]


def test_the_findings_name_the_command_and_the_folder_that_made_them():
    assert "results/cpu/" in findings() and "snakemake --cores all --config preset=cpu" in findings()


def test_every_number_in_the_findings_is_in_a_committed_results_file():
    numbers = set(re.findall(r"(?<![\w.])[+-]?\d+\.\d+", findings()))
    corpus = "\n".join(p.read_text(errors="ignore") for p in (REPO / "results").rglob("*")
                       if p.suffix in (".md", ".csv", ".json", ".jsonl"))
    missing = sorted(n for n in numbers if n not in corpus and n.lstrip("+") not in corpus)
    assert len(numbers) >= 20 and not missing, missing
