"""The transformer segmenter (swin_unetr) and the coupled dual-stream network, at tiny sizes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from medsemi.nets import create_net
from medsemi.nets.dual_stream import DualStreamNet

TINY_SWIN = {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 1, 1), "window_size": 4}
TINY_DUAL = {"widths": (4, 8, 16, 32, 64), "embed_dim": 16, "depth": 3, "num_heads": 2, "img_size": 32}


def _swin(**options) -> nn.Module:
    return create_net("swin_unetr", in_channels=1, num_classes=4, **{**TINY_SWIN, **options})


def _dual(**options) -> DualStreamNet:
    return create_net("dual_stream", in_channels=1, num_classes=4, **{**TINY_DUAL, **options})  # type: ignore[return-value]


def test_swin_unetr_gives_logits_and_last_decoder_features() -> None:
    net = _swin().eval()
    x = torch.randn(2, 1, 64, 64)
    logits, features = net(x, return_features=True)
    assert logits.shape == (2, 4, 64, 64)
    assert features.shape == (2, 12, 64, 64)
    assert torch.allclose(net(x), logits)
    assert torch.allclose(net.out(features), logits)
    with pytest.raises(ValueError, match="divisible"):
        net(torch.randn(1, 1, 48, 48))


def test_pretrained_loads_a_local_state_dict_also_nested_and_ddp_prefixed(tmp_path: Path) -> None:
    source = _swin().eval()
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    loaded = _swin(pretrained=str(path)).eval()
    fresh = _swin().eval()
    x = torch.randn(1, 1, 32, 32)
    assert torch.equal(loaded(x), source(x))
    assert not torch.equal(fresh(x), source(x))


def test_pretrained_errors_name_the_file_and_the_keys(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        _swin(pretrained=str(missing))
    other = tmp_path / "other.pt"
    torch.save(_swin(feature_size=24).state_dict(), other)
    with pytest.raises(ValueError, match="shape mismatches"):
        _swin(pretrained=str(other))
    partial = tmp_path / "partial.pt"
    source = _swin()
    torch.save({k: v for k, v in source.state_dict().items() if k.startswith("swinViT.")}, partial)
    with pytest.raises(ValueError, match="missing"):
        _swin(pretrained=str(partial))
    with pytest.warns(UserWarning, match="skipped"):
        encoder_only = _swin(pretrained=str(partial), pretrained_strict=False)
    assert torch.equal(encoder_only.swinViT.patch_embed.proj.weight, source.swinViT.patch_embed.proj.weight)
    unrelated = tmp_path / "unrelated.pt"
    torch.save({"foo.weight": torch.zeros(3)}, unrelated)
    with pytest.raises(ValueError, match="no key"):
        _swin(pretrained=str(unrelated), pretrained_strict=False)


def test_dual_stream_heads_shapes_and_fused_head() -> None:
    net = _dual().eval()
    x = torch.randn(2, 1, 64, 64)  # 64 != img_size 32: the position embedding is interpolated
    (cnn_logits, cnn_features), (token_logits, token_features) = net.forward_streams(x)
    assert cnn_logits.shape == token_logits.shape == (2, 4, 64, 64)
    assert cnn_features.shape[1] == 4 and token_features.shape[2:] == (64, 64)
    assert torch.equal(net(x), cnn_logits)
    net.head = "transformer"
    assert torch.equal(net(x), token_logits)
    net.head = "mean"
    fused = (cnn_logits.softmax(1) + token_logits.softmax(1)) / 2
    assert torch.allclose(net(x).exp(), fused, atol=1e-6)
    with pytest.raises(ValueError, match="head"):
        net.head = "both"


def _outputs(net: DualStreamNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.no_grad():
        (cnn, _), (token, _) = net.forward_streams(x)
    return cnn, token


@pytest.mark.parametrize("unit", ["transformer.fcu_down", "cnn.fcu_up"])
def test_feature_coupling_changes_both_streams_outputs(unit: str) -> None:
    """Perturbing either direction of one coupling unit changes the CNN head and the transformer head."""
    net = _dual().eval()
    x = torch.randn(2, 1, 32, 32)
    cnn_before, token_before = _outputs(net, x)
    stream, name = unit.split(".")
    first = getattr(getattr(net, stream), name)[0]
    with torch.no_grad():
        for p in first.parameters():
            p.add_(torch.randn_like(p))
    cnn_after, token_after = _outputs(net, x)
    assert not torch.allclose(cnn_after, cnn_before)
    assert not torch.allclose(token_after, token_before)


def test_without_coupling_the_cnn_stream_ignores_the_transformer() -> None:
    net = _dual(coupling=False).eval()
    assert net.transformer.fcu_down is None and net.cnn.fcu_up is None
    x = torch.randn(2, 1, 32, 32)
    cnn_before, token_before = _outputs(net, x)
    with torch.no_grad():
        for p in net.transformer.stages.parameters():
            p.add_(torch.randn_like(p))
    cnn_after, token_after = _outputs(net, x)
    assert torch.equal(cnn_after, cnn_before)
    assert not torch.allclose(token_after, token_before)


def test_cnn_head_loss_reaches_the_transformer_stream_through_coupling() -> None:
    net = _dual()
    (cnn_logits, _), _ = net.forward_streams(torch.randn(2, 1, 32, 32))
    cnn_logits.square().mean().backward()
    assert net.transformer.stages[0][0].mlp.linear1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in net.transformer.decoder.parameters())


def test_dual_stream_rejects_bad_coupling_levels() -> None:
    with pytest.raises(ValueError, match="coupling_levels"):
        _dual(coupling_levels=(3, 2))
    with pytest.raises(ValueError, match="exceed patch"):
        _dual(patch_size=8)
