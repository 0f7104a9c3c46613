"""pipeline.stages.checkpoint: checkpoints round-trip, corrupt ones fail clearly, the resume state round-trips
and refuses another setup, and the sample stage reads checkpoints without depending on the training loop."""
import pytest
import torch

from pipeline.stages.checkpoint import KIND_UNET, STATE_JSON, load_checkpoint, load_state, save_checkpoint, save_state
from pipeline.config import DiffusionConfig, ModelConfig, TrainConfig, make
from pipeline.util.errors import CheckpointError, ConfigError
from pipeline.core.unet import build_unet, unet_config

MODEL = make(ModelConfig, preset="tiny", overrides={"ch": 16, "ch_mult": [1, 2], "num_res_blocks": 1,
                                                    "attn_resolutions": [4], "num_groups": 8, "dropout": 0.1})
CFG = make(TrainConfig, steps=8, batch_size=8, lr=2e-3, warmup_steps=2, ema_decay=0.9, device="cpu", seed=1)


def ucfg():
    return unet_config("tiny", MODEL.overrides, in_channels=1, image_size=8)


def test_checkpoint_round_trip_gives_the_same_eps(tmp_path):
    model = build_unet(ucfg()).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    side = save_checkpoint(model, tmp_path / "unet.safetensors", {"kind": KIND_UNET, "unet": ucfg().to_dict()})
    loaded, side2 = load_checkpoint(tmp_path / "unet.safetensors", "cpu")
    assert side2 == side and not loaded.training
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 50, 99])
    with torch.no_grad():
        assert torch.equal(loaded(x, t), model(x, t))
    assert load_checkpoint(tmp_path, "cpu")[1] == side  # the folder works too


def test_corrupt_or_missing_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "unet.safetensors"
    save_checkpoint(build_unet(ucfg()), path, {"kind": KIND_UNET, "unet": ucfg().to_dict()})
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0xFF  # one flipped bit in the weights
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="weights_sha256"):
        load_checkpoint(path, "cpu")
    path.write_bytes(b"garbage, not safetensors")
    side = path.with_suffix(".json")
    side.write_text(side.read_text().replace('"weights_sha256"', '"old_sha256"'))
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        load_checkpoint(path, "cpu")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing.safetensors", "cpu")


def trained_state():
    """A TrainState after one update, so that AdamW has moments and a step count to save."""
    from pipeline.stages.train import new_state, train_step

    state = new_state(ucfg(), CFG, "cpu")
    data = torch.randint(0, 256, (16, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    alpha_bar = torch.as_tensor(make(DiffusionConfig, T=100).noise_schedule().alpha_bar, dtype=torch.float64)
    loss = train_step(state, state.model, data, alpha_bar, CFG, "cpu")
    state.log.append([state.step, loss, CFG.lr, 1.0, 0.1])
    return state


def test_resume_state_round_trips_and_refuses_another_setup(tmp_path):
    from pipeline.stages.train import new_state

    saved, identity = trained_state(), {"seed": 1, "lr": 2e-3}
    assert not load_state(new_state(ucfg(), CFG, "cpu"), tmp_path, identity)  # nothing saved yet
    weights = save_state(saved, tmp_path, identity)
    state = new_state(ucfg(), CFG, "cpu")
    assert load_state(state, tmp_path, identity)
    assert state.step == saved.step == 1 and state.log == saved.log and state.resumed_from == [1]
    for a, b in ((state.model, saved.model), (state.ema, saved.ema)):
        assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    moments, want = state.optimizer.state_dict()["state"], saved.optimizer.state_dict()["state"]
    assert moments.keys() == want.keys() and len(want) > 0
    assert all(torch.equal(moments[i][k], want[i][k]) for i in want for k in ("exp_avg", "exp_avg_sq", "step"))

    with pytest.raises(ConfigError, match=r"different setup \(lr: saved 0.002, now 0.001\)"):
        load_state(new_state(ucfg(), CFG, "cpu"), tmp_path, {**identity, "lr": 1e-3})
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match="checksum"):
        load_state(new_state(ucfg(), CFG, "cpu"), tmp_path, identity)
    assert (tmp_path / STATE_JSON).is_file()


def test_sample_stage_does_not_depend_on_the_training_loop():
    """The checkpoint format lives here, so an edit of train.py reruns no sample job (DVC deps, Snakemake params)."""
    from pipeline import dag

    deps = dag.stage_modules("sample")
    assert "pipeline/stages/checkpoint.py" in deps and "pipeline/stages/train.py" not in deps
    assert "pipeline/stages/checkpoint.py" in dag.stage_modules("train")
