"""The folders of `pipeline/` are its layers, and each layer imports only the layers below it:

    util     errors, atomic files, console, provenance: nothing else of pipeline
    core     the numerical core (schedules, spacing, samplers, exact-score data, intervals,
             U-Net): util and core only, no configuration and no files of the pipeline
    report   records, labels, tables, claims, figures: util, core, report, and the
             configuration's constants
    stages   one driver per stage: anything but the wiring (dag, cli)
    config, dag, cli, runner, bench: the wiring at the top
"""
import ast
from pathlib import Path

import pytest

from pipeline import dag

REPO = Path(__file__).resolve().parents[1]
ALLOWED = {
    "util": {"util"},
    "core": {"util", "core"},
    "report": {"util", "core", "report", "config"},
    "stages": {"util", "core", "report", "stages", "config"},
}
LAYERS = sorted(ALLOWED)


def layer_of(module: str) -> str:
    """pipeline.core.gmm -> core; pipeline.config -> config; pipeline -> pipeline."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def modules_of(layer: str) -> list:
    return sorted((REPO / "pipeline" / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_imports_only_the_layers_below_it(layer):
    for path in modules_of(layer):
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        imported = dag._imports(ast.parse(path.read_text()), module, lazy=True)
        wrong = sorted(m for m in imported if layer_of(m) not in ALLOWED[layer] and m != "pipeline")
        assert not wrong, f"{path.relative_to(REPO)} ({layer}) imports {wrong}; {layer} may import {sorted(ALLOWED[layer])}"


def test_the_top_of_pipeline_holds_only_the_layers_and_the_wiring():
    top = sorted(p.name for p in (REPO / "pipeline").iterdir() if p.name != "__pycache__")
    assert top == ["__init__.py", "__main__.py", "bench", "cli.py", "config.py", "core", "dag.py",
                   "params.schema.yaml", "report", "runner.py", "stages", "util"]

