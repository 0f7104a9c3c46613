"""pipeline.stages.train: the loss goes down, a killed run resumes to the same weights, bad configs fail clearly,
and an imported diffusers UNet2DModel gives its own eps (checkpoint files themselves: test_checkpoint.py)."""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.config import ConfigError, DatasetConfig, DiffusionConfig, ModelConfig, TrainConfig, make
from pipeline.stages.data import prepare
from pipeline.stages.checkpoint import load_checkpoint
from pipeline.stages.train import batch_indices, train

# A small U-Net on 8x8 grey images: same code paths as the presets (attention, dropout, resampling).
MODEL = make(ModelConfig, preset="tiny", overrides={"ch": 16, "ch_mult": [1, 2], "num_res_blocks": 1,
                                                    "attn_resolutions": [4], "num_groups": 8, "dropout": 0.1})
DIFFUSION = make(DiffusionConfig, T=100)
CFG = make(TrainConfig, steps=8, batch_size=8, lr=2e-3, warmup_steps=2, checkpoint_every=3, log_every=2,
           ema_decay=0.9, device="cpu", seed=1)




@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """64 8x8 grey images: a bright square at one of four positions (easy structure to learn)."""
    root = tmp_path_factory.mktemp("data")
    x = np.zeros((64, 8, 8), dtype=np.uint8)
    for i in range(64):
        r, c = 4 * ((i // 2) % 2), 4 * (i % 2)
        x[i, r:r + 4, c:c + 4] = 255
    np.savez(root / "squares.npz", x_train=x, y_train=np.arange(64) % 4)
    prepare(make(DatasetConfig, name="squares", source="npz", root=str(root / "squares.npz")), root / "prepared")
    return root / "prepared"


def read_tensors(path):
    from safetensors.torch import load_file

    return load_file(str(path))


def test_loss_decreases_and_outputs_are_written(data_dir, tmp_path):
    cfg = replace(CFG, steps=60, log_every=10, checkpoint_every=60, lr=3e-3, warmup_steps=5)
    side = train(cfg, MODEL, DIFFUSION, data_dir, tmp_path / "out", tmp_path / "resume")
    rows = (tmp_path / "out" / "loss.csv").read_text().splitlines()
    assert rows[0] == "step,loss,lr,images_per_s,wall_s" and len(rows) == 1 + 6
    losses = [float(r.split(",")[1]) for r in rows[1:]]
    assert losses[-1] < 0.6 * losses[0]  # starts near E||eps||^2 = 1 (near-zero last layers)
    assert (tmp_path / "out" / "loss.png").stat().st_size > 1000
    assert side["kind"] == "ddbench-unet" and side["step"] == 60 and side["ema_decay"] == cfg.ema_decay
    assert side["unet"]["in_channels"] == 1 and side["unet"]["image_size"] == 8
    assert len(side["data_manifest_sha256"]) == 64 and side["device"] == "cpu"


def test_batches_walk_through_a_permutation_each_epoch():
    n, b = 20, 8  # 5 steps = 2 epochs exactly
    idx = torch.cat([batch_indices(0, k, b, n) for k in range(5)])
    assert sorted(idx[:20].tolist()) == list(range(20)) and sorted(idx[20:].tolist()) == list(range(20))
    assert torch.equal(batch_indices(0, 3, b, n), batch_indices(0, 3, b, n))
    assert not torch.equal(batch_indices(0, 3, b, n), batch_indices(1, 3, b, n))


class Killed(Exception):
    pass


def test_killed_run_resumes_to_the_same_weights_as_an_uninterrupted_run(data_dir, tmp_path):
    full = train(CFG, MODEL, DIFFUSION, data_dir, tmp_path / "full", tmp_path / "full-resume")

    def kill_at_5(step, loss):  # after the checkpoint at step 3, before the one at 6
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        train(CFG, MODEL, DIFFUSION, data_dir, tmp_path / "run", tmp_path / "run-resume", callback=kill_at_5)
    assert not (tmp_path / "run" / "unet.safetensors").exists()
    resumed = train(CFG, MODEL, DIFFUSION, data_dir, tmp_path / "run", tmp_path / "run-resume")

    assert resumed["resumed_from"] == [3] and full["resumed_from"] == []
    a, b = read_tensors(tmp_path / "full" / "unet.safetensors"), read_tensors(tmp_path / "run" / "unet.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # bit for bit (CPU)
    sa = read_tensors(next((tmp_path / "full-resume").glob("state-*.safetensors")))
    sb = read_tensors(next((tmp_path / "run-resume").glob("state-*.safetensors")))
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)  # raw weights and AdamW moments
    col = lambda p: [r.split(",")[1] for r in (p / "loss.csv").read_text().splitlines()]  # noqa: E731
    assert col(tmp_path / "full") == col(tmp_path / "run")

    # a finished state is not retrained; a different setup is refused
    again = train(CFG, MODEL, DIFFUSION, data_dir, tmp_path / "run", tmp_path / "run-resume")
    assert again["resumed_from"] == [3, 8]
    with pytest.raises(ConfigError, match=r"different setup.*lr"):
        train(replace(CFG, lr=1e-3), MODEL, DIFFUSION, data_dir, tmp_path / "run", tmp_path / "run-resume")


@pytest.mark.parametrize("cfg,model,match", [
    # bad train.* values never get here: the schema refuses them at load (tests/test_config.py)
    (CFG, replace(MODEL, preset="huge"), "model.preset"),
    (CFG, replace(MODEL, overrides={**MODEL.overrides, "in_channels": 3}), "model.overrides.in_channels"),
])
def test_bad_config_fails_before_training(data_dir, tmp_path, cfg, model, match):
    with pytest.raises(ConfigError, match=match):
        train(cfg, model, DIFFUSION, data_dir, tmp_path / "out", tmp_path / "resume")
    assert not (tmp_path / "out").exists() and not (tmp_path / "resume").exists()


def test_imported_diffusers_unet_gives_the_diffusers_eps(data_dir, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=4, attention_head_dim=8,
    ).eval()
    unet.save_pretrained(tmp_path / "hf")
    side = train(CFG, make(ModelConfig, pretrained=str(tmp_path / "hf")), DIFFUSION, data_dir, tmp_path / "out",
                 tmp_path / "resume")
    assert side["kind"] == "diffusers" and side["diffusers_config"]["block_out_channels"] == [8, 16]
    assert (tmp_path / "out" / "loss.csv").read_text().strip() == "step,loss,lr,images_per_s,wall_s"

    model, _ = load_checkpoint(tmp_path / "out" / "unet.safetensors", "cpu")
    x, t = torch.randn(3, 1, 8, 8), torch.tensor([1, 40, 99])
    with torch.no_grad():
        assert torch.equal(model(x, t), unet(x, t).sample)

    with pytest.raises(ConfigError, match="in_channels"):  # 1-channel model, 3-channel data
        rgb = tmp_path / "rgb.npz"
        np.savez(rgb, x_train=np.zeros((4, 8, 8, 3), np.uint8), y_train=np.zeros(4, np.int64))
        prepare(make(DatasetConfig, name="rgb", source="npz", root=str(rgb)), tmp_path / "rgb")
        train(CFG, make(ModelConfig, pretrained=str(tmp_path / "hf")), DIFFUSION, tmp_path / "rgb", tmp_path / "o2",
              tmp_path / "r2")


def test_a_shipped_checkpoint_stands_in_for_training_byte_for_byte(data_dir, tmp_path):
    side = train(CFG, MODEL, DIFFUSION, data_dir, tmp_path / "trained", tmp_path / "resume")
    shipped = replace(MODEL, checkpoint=str(tmp_path / "trained" / "unet.safetensors"))
    got = train(CFG, shipped, DIFFUSION, data_dir, tmp_path / "out", tmp_path / "resume2")
    assert (tmp_path / "out" / "unet.safetensors").read_bytes() == (tmp_path / "trained" / "unet.safetensors").read_bytes()
    assert got["shipped_from"] == shipped.checkpoint and got["step"] == side["step"]
    assert not (tmp_path / "resume2").exists()  # nothing was trained
    model, _ = load_checkpoint(tmp_path / "out" / "unet.safetensors")
    assert sum(p.numel() for p in model.parameters()) == side["params"]


def test_a_shipped_checkpoint_that_does_not_match_is_refused_naming_the_file(data_dir, tmp_path):
    from pipeline.util.errors import CheckpointError

    train(CFG, MODEL, DIFFUSION, data_dir, tmp_path / "trained", tmp_path / "resume")
    weights = tmp_path / "trained" / "unet.safetensors"
    shipped = replace(MODEL, checkpoint=str(weights))
    # another forward process than the one it was trained for
    with pytest.raises(CheckpointError, match=r"model.checkpoint: .*unet.safetensors was trained with diffusion"):
        train(CFG, shipped, make(DiffusionConfig, T=200), data_dir, tmp_path / "o1", tmp_path / "r1")
    # another image shape: a sidecar that claims 3 channels
    import json

    sc = json.loads(weights.with_suffix(".json").read_text())
    weights.with_suffix(".json").write_text(json.dumps({**sc, "in_channels": 3}))
    with pytest.raises(CheckpointError, match=r"makes images of shape \[3, 8, 8\].*data set's are \[1, 8, 8\]"):
        train(CFG, shipped, DIFFUSION, data_dir, tmp_path / "o2", tmp_path / "r2")
    # weights that do not match the sidecar's hash
    weights.with_suffix(".json").write_text(json.dumps(sc))
    weights.write_bytes(weights.read_bytes()[:-1] + b"\0")
    with pytest.raises(CheckpointError, match=r"model.checkpoint: .*unet.safetensors has sha256 .*its sidecar .* says"):
        train(CFG, shipped, DIFFUSION, data_dir, tmp_path / "o3", tmp_path / "r3")
    # a corrupt header whose sidecar was rewritten to match: the hash agrees, the file does not load
    from pipeline.util import files

    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:])
    weights.with_suffix(".json").write_text(json.dumps({**sc, "weights_sha256": files.sha256_file(weights)}))
    with pytest.raises(CheckpointError, match=r"unet.safetensors is not a readable safetensors file.*model.checkpoint: "
                                              r"replace"):
        train(CFG, shipped, DIFFUSION, data_dir, tmp_path / "o4", tmp_path / "r4")
    for out in ("o1", "o2", "o3", "o4"):
        assert not (tmp_path / out / "unet.safetensors").exists()  # nothing half-written


def test_a_wall_clock_budget_stops_training_at_the_first_step_past_it_and_says_so(data_dir, tmp_path):
    cfg = replace(CFG, steps=100_000, wall_clock_s=1.0, checkpoint_every=1000)
    side = train(cfg, MODEL, DIFFUSION, data_dir, tmp_path / "out", tmp_path / "resume")
    assert side["stopped_by"] == "wall_clock_s" and 1 <= side["step"] < 100_000
    assert side["wall_s"] >= 1.0 and side["train"]["wall_clock_s"] == 1.0
    # the final step is checkpointed like any last step: a rerun resumes there and stops at once
    again = train(cfg, MODEL, DIFFUSION, data_dir, tmp_path / "again", tmp_path / "resume")
    assert again["step"] == side["step"] and again["stopped_by"] == "wall_clock_s"
    # without a budget the step count decides
    assert train(CFG, MODEL, DIFFUSION, data_dir, tmp_path / "n", tmp_path / "n-resume")["stopped_by"] == "steps"


def test_bf16_autocast_and_channels_last_train_on_the_cpu_and_are_recorded(data_dir, tmp_path):
    cfg = replace(CFG, bf16=True, channels_last=True, steps=4)
    side = train(cfg, MODEL, DIFFUSION, data_dir, tmp_path / "out", tmp_path / "resume")
    fp32 = train(replace(CFG, steps=4), MODEL, DIFFUSION, data_dir, tmp_path / "fp32", tmp_path / "fp32-resume")
    assert side["precision"] == "bf16 autocast" and fp32["precision"] == "float32"
    a, b = read_tensors(tmp_path / "out" / "unet.safetensors"), read_tensors(tmp_path / "fp32" / "unet.safetensors")
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert 0 < diff < 0.05  # a different run, not a different model
