"""MTNet (CDMA, Zhong et al., MICCAI 2023): one shared encoder, three decoders that differ only by attention.

Branches, in this order: "csa" (CBAM), "sa" (spatial), "ca" (channel). `forward` is the CSA branch, the
paper's inference network; `branch_outputs` gives any subset of branches from one encoder pass.

Two encoders:
- `mtnet`: the SSL4MIS U-Net encoder and decoders (our default: trains from scratch, fair next to the other
  methods on ACDC), each decoder stage followed by the branch's attention;
- `mtnet_resnet50`: the paper's DeepLabV3+ (ResNet-50, output stride 16, ASPP, GroupNorm heads), with
  ImageNet weights read from a local torchvision state_dict file when `pretrained` names one.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from medsemi.nets.attention import ATTENTION_KINDS, make_attention
from medsemi.nets.registry import register_net
from medsemi.nets.unet import UNetDecoder, UNetEncoder

BRANCHES = ATTENTION_KINDS


def feature_noise(x: Tensor, amount: float) -> Tensor:
    """x * (1 + U(-amount, amount)), one noise map per channel and pixel shared by the batch (CDMA, CCT)."""
    noise = torch.empty_like(x[:1]).uniform_(-amount, amount)
    return x + x * noise


class MTNet(nn.Module):
    """Shared encoder + `decoders` (a ModuleDict keyed by branch); subclasses define `encode`.

    Each decoder maps (encoder features, output size) -> (logits, last decoder features). In training mode
    with `perturbation > 0`, the SA and CA branches see multiplicatively perturbed encoder features (the
    paper's figure; the official code computes the noise but never uses it, so the default is 0).
    """

    decoders: nn.ModuleDict

    def __init__(self, perturbation: float = 0.0) -> None:
        super().__init__()
        self.perturbation = perturbation

    def encode(self, x: Tensor) -> list[Tensor]:
        raise NotImplementedError

    def perturb(self, features: list[Tensor]) -> list[Tensor]:
        return [feature_noise(f, self.perturbation) for f in features]

    def branch_outputs(self, x: Tensor, branches: Sequence[str] = BRANCHES) -> dict[str, tuple[Tensor, Tensor]]:
        """{branch: (logits (B, K, H, W), features)} for the requested branches, from one encoder pass."""
        features = self.encode(x)
        noisy = self.training and self.perturbation > 0
        outputs = {}
        for name in branches:
            inputs = self.perturb(features) if noisy and name != "csa" else features
            outputs[name] = self.decoders[name](inputs, x.shape[2:])
        return outputs

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        logits, features = self.branch_outputs(x, ("csa",))["csa"]
        return (logits, features) if return_features else logits

    def optimiser_groups(self) -> dict[str, nn.Module]:
        """Parts that get their own optimizer (and may get their own learning rate in the config)."""
        return {"mtnet": self}


class BranchView(nn.Module):
    """One branch of an MTNet, or several averaged, as a plain segmenter (predictor, ensemble member).

    With several branches the output is log(mean of the branches' softmax): its softmax and argmax are the
    ensemble's probabilities and labels.
    """

    def __init__(self, net: MTNet, branches: Sequence[str]) -> None:
        super().__init__()
        unknown = sorted(set(branches) - set(BRANCHES))
        if unknown or not branches:
            raise ValueError(f"MTNet branches must be a non-empty subset of {BRANCHES}, got {list(branches)}")
        self.net = net
        self.branches = tuple(branches)

    def forward(self, x: Tensor, return_features: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        outputs = list(self.net.branch_outputs(x, self.branches).values())
        if len(outputs) == 1:
            logits, features = outputs[0]
        else:
            probs = torch.stack([out[0].softmax(1) for out in outputs]).mean(0)
            logits = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
            features = torch.stack([out[1] for out in outputs]).mean(0)
        return (logits, features) if return_features else logits


# --- (a) SSL4MIS U-Net encoder/decoders -------------------------------------------------------------


class AttentionUNetDecoder(nn.Module):
    """The SSL4MIS U-Net decoder with the branch's attention on every stage's fused input.

    As CDMA's `Decoder_Attention` gates the concatenation of its two inputs and then normalises, each stage
    gates [skip, up-sampled] and its conv-BN block re-normalises, so the classifier sees normalised features.
    Gating the stage outputs instead (our first design) left the head features at a quarter of their scale
    (two sigmoids of about 0.5) and the MTNet predicted no foreground after 200 supervised iterations
    (docs/methods/cdma.md).
    """

    def __init__(self, widths: list[int], num_classes: int, attention: str) -> None:
        super().__init__()
        self.decoder = UNetDecoder(widths, num_classes)
        self.attention = nn.ModuleList(
            make_attention(attention, 2 * widths[i - 1]) for i in range(len(widths) - 1, 0, -1)
        )

    def forward(self, skips: list[Tensor], size: Sequence[int]) -> tuple[Tensor, Tensor]:
        x = skips[-1]
        for up, attention, skip in zip(self.decoder.ups, self.attention, reversed(skips[:-1]), strict=True):
            x = up.conv(attention(torch.cat([skip, up.up(x)], dim=1)))
        return self.decoder.head(x), x


class UNetMTNet(MTNet):
    """SSL4MIS U-Net encoder (widths 16..256, dropout 0.05..0.5) shared by three attention decoders.

    With `perturbation`, every encoder level is perturbed, as SSL4MIS's UNet_CCT perturbs its auxiliary
    decoders' inputs.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        widths: Sequence[int] = (16, 32, 64, 128, 256),
        dropouts: Sequence[float] = (0.05, 0.1, 0.2, 0.3, 0.5),
        perturbation: float = 0.0,
    ) -> None:
        super().__init__(perturbation)
        if len(widths) != len(dropouts):
            raise ValueError(f"mtnet: {len(widths)} widths but {len(dropouts)} dropout rates")
        self.encoder = UNetEncoder(in_channels, list(widths), list(dropouts))
        self.decoders = nn.ModuleDict({k: AttentionUNetDecoder(list(widths), num_classes, k) for k in BRANCHES})

    def encode(self, x: Tensor) -> list[Tensor]:
        return self.encoder(x)


# --- (b) DeepLabV3+ on ResNet-50 (the paper's network) ----------------------------------------------


class FrozenBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm that always normalises with its running (ImageNet) statistics; gamma and beta still learn.

    PuzzleCAM's `FixedBatchNorm`, used by CDMA for the whole backbone: small pathology batches never
    overwrite the pre-trained statistics.
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)


class Bottleneck(nn.Module):
    """torchvision's ResNet v1.5 bottleneck (stride on the 3x3 conv), with its parameter names."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = norm(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = norm(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = norm(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), norm(out_channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class ResNet50(nn.Module):
    """ResNet-50 with strides (2, 2, 2, 1) and no dilation: output stride 16, as CDMA builds it.

    Returns (layer1 output: 256 ch at stride 4, layer4 output: 2048 ch at stride 16).
    """

    def __init__(self, in_channels: int, norm: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = norm(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        channels = 64
        layers = []
        for planes, blocks, stride in zip((64, 128, 256, 512), (3, 4, 6, 3), (1, 2, 2, 1), strict=True):
            stage = []
            for i in range(blocks):
                stage.append(Bottleneck(channels, planes, stride if i == 0 else 1, norm))
                channels = planes * Bottleneck.expansion
            layers.append(nn.Sequential(*stage))
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        low = self.layer1(self.maxpool(self.relu(self.bn1(self.conv1(x)))))
        return low, self.layer4(self.layer3(self.layer2(low)))


def load_resnet50_weights(backbone: ResNet50, path: str | Path) -> None:
    """Load a torchvision ResNet-50 state_dict file (the `fc` head is dropped).

    A first conv made for RGB is adapted to other channel counts by averaging its filters over the colour
    channels and repeating them (scaled), so any image with equal channels gets the response the RGB
    filters give to that grey image.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"mtnet_resnet50: pretrained weights {path} do not exist. Nothing is downloaded: save "
            "torchvision's ImageNet ResNet-50 state_dict (e.g. resnet50-19c8e357.pth) there, or set "
            "net.options.pretrained: null to train from scratch"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    state = {k.removeprefix("module."): v for k, v in state.items() if not k.startswith("fc.")}
    conv1 = state.get("conv1.weight")
    in_channels = backbone.conv1.in_channels
    if conv1 is not None and conv1.shape[1] != in_channels:
        state["conv1.weight"] = conv1.mean(1, keepdim=True).repeat(1, in_channels, 1, 1) * (3 / in_channels)
    expected = backbone.state_dict().keys()
    # torchvision files before 0.4.1 (resnet50-19c8e357.pth) lack the BN counters; BatchNorm fills them in.
    missing = sorted(k for k in expected - state.keys() if not k.endswith("num_batches_tracked"))
    unexpected = sorted(state.keys() - expected)
    if missing or unexpected:
        raise ValueError(
            f"{path} is not a torchvision ResNet-50 state_dict: missing {missing[:4]}, unexpected {unexpected[:4]}"
        )
    backbone.load_state_dict(state)


def _kaiming(module: nn.Module) -> nn.Module:
    """CDMA initialises its new convolutions with Kaiming-normal (fan-in)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight)
    return module


def _conv_gn_relu(
    in_channels: int, out_channels: int, kernel_size: int, groups: int, dilation: int = 1
) -> nn.Sequential:
    padding = dilation * (kernel_size // 2)
    return _kaiming(
        nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel_size, padding=padding, dilation=dilation, bias=False),
            nn.GroupNorm(groups, out_channels),
            nn.ReLU(inplace=True),
        )
    )


class ASPP(nn.Module):
    """1x1, three 3x3 atrous (6, 12, 18) and image pooling, 256 ch each -> concat -> 1x1 -> 256, dropout."""

    def __init__(self, in_channels: int = 2048, channels: int = 256, groups: int = 4) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [_conv_gn_relu(in_channels, channels, 1, groups)]
            + [_conv_gn_relu(in_channels, channels, 3, groups, dilation=d) for d in (6, 12, 18)]
        )
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), _conv_gn_relu(in_channels, channels, 1, groups))
        self.project = nn.Sequential(_conv_gn_relu(5 * channels, channels, 1, groups), nn.Dropout(0.5))

    def forward(self, x: Tensor) -> Tensor:
        pooled = self.pool(x).expand(-1, -1, *x.shape[2:])
        return self.project(torch.cat([branch(x) for branch in self.branches] + [pooled], dim=1))


class DeepLabAttentionDecoder(nn.Module):
    """CDMA's `Decoder_Attention`: DeepLabV3+ decoder with attention on the fused input and after conv 1.

    low (256 ch, stride 4) -> 1x1 -> 48; ASPP output up-sampled to stride 4; concat (304) -> attention ->
    3x3 -> GN -> attention -> ReLU -> dropout 0.5 -> 3x3 -> GN -> ReLU -> dropout 0.1 -> 1x1 classifier ->
    bilinear up-sampling to the input size. The official code defines the second GroupNorm but skips it
    (a bug we do not reproduce).
    """

    def __init__(self, num_classes: int, attention: str, channels: int = 256, groups: int = 4) -> None:
        super().__init__()
        fused = channels + 48
        self.reduce = _conv_gn_relu(256, 48, 1, groups)
        self.attention_in = make_attention(attention, fused)
        self.conv1 = _kaiming(nn.Conv2d(fused, channels, 3, padding=1, bias=False))
        self.norm1 = nn.GroupNorm(groups, channels)
        self.attention_mid = make_attention(attention, channels)
        self.dropout1 = nn.Dropout(0.5)
        self.conv2 = _conv_gn_relu(channels, channels, 3, groups)
        self.dropout2 = nn.Dropout(0.1)
        self.classifier = _kaiming(nn.Conv2d(channels, num_classes, 1))

    def forward(self, features: list[Tensor], size: Sequence[int]) -> tuple[Tensor, Tensor]:
        low, high = features
        low = self.reduce(low)
        high = F.interpolate(high, size=low.shape[2:], mode="bilinear", align_corners=True)
        x = self.attention_in(torch.cat([high, low], dim=1))
        x = self.dropout1(F.relu(self.attention_mid(self.norm1(self.conv1(x)))))
        x = self.dropout2(self.conv2(x))
        logits = F.interpolate(self.classifier(x), size=tuple(size), mode="bilinear", align_corners=True)
        return logits, x


class DeepLabMTNet(MTNet):
    """The paper's MTNet: ResNet-50 (frozen-statistics BN) -> ASPP -> three attention decoders.

    `frozen_bn=None` freezes the BN statistics only when pre-trained weights are loaded: frozen random
    statistics (mean 0, variance 1) would leave a from-scratch backbone un-normalised.
    `perturbation` applies to the ASPP output, where the official (dead) code samples it.
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        pretrained: str | None = None,
        frozen_bn: bool | None = None,
        perturbation: float = 0.0,
        groups: int = 4,
    ) -> None:
        super().__init__(perturbation)
        frozen = pretrained is not None if frozen_bn is None else frozen_bn
        self.backbone = ResNet50(in_channels, FrozenBatchNorm2d if frozen else nn.BatchNorm2d)
        if pretrained is not None:
            load_resnet50_weights(self.backbone, pretrained)
        self.aspp = ASPP(groups=groups)
        self.decoders = nn.ModuleDict({k: DeepLabAttentionDecoder(num_classes, k, groups=groups) for k in BRANCHES})

    def encode(self, x: Tensor) -> list[Tensor]:
        low, high = self.backbone(x)
        return [low, self.aspp(high)]

    def perturb(self, features: list[Tensor]) -> list[Tensor]:
        low, high = features
        return [low, feature_noise(high, self.perturbation)]

    def optimiser_groups(self) -> dict[str, nn.Module]:
        """The paper trains the new layers at 10x the backbone's learning rate: name them apart."""
        return {"backbone": self.backbone, "heads": nn.ModuleList([self.aspp, self.decoders])}


@register_net("mtnet")
def mtnet(in_channels: int, num_classes: int, **options) -> UNetMTNet:
    return UNetMTNet(in_channels, num_classes, **options)


@register_net("mtnet_resnet50")
def mtnet_resnet50(in_channels: int, num_classes: int, **options) -> DeepLabMTNet:
    return DeepLabMTNet(in_channels, num_classes, **options)
