"""The configurations the tests start from, and how a test project writes one: a preset file
(presets/<preset>.yaml, the complete configuration) and params.yaml naming it, with every section
empty for the user's own changes, as the repository's own params.yaml is."""
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("run", "diffusion", "datasets", "model", "train", "classifier", "sample", "fid", "grid", "overrides")


def preset_params(name: str = "embedded") -> dict:
    """presets/<name>.yaml as a dict (the complete configuration of that preset)."""
    return yaml.safe_load((REPO / "presets" / f"{name}.yaml").read_text())


def write_config(root: Path, params: dict, preset: str = "embedded") -> Path:
    """`params` as the preset file presets/<preset>.yaml under `root`, and a params.yaml that names
    it. Returns the params.yaml path."""
    body = {k: v for k, v in params.items() if k != "preset"}
    (root / "presets").mkdir(parents=True, exist_ok=True)
    (root / "presets" / f"{preset}.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump({"preset": preset, **{s: {} for s in SECTIONS}}, sort_keys=False))
    return path
