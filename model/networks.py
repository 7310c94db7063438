"""Generator (coarse + refinement) and SN-PatchGAN discriminator.

Unlike DeepFill v2, the colour-matched warped reference and its validity mask are inputs.
Where the reference is valid, the refinement predicts a correction over pasting it (its last
layer starts at zero), so an untrained generator equals the paste baseline.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from model.layers import GatedConv2d, GatedUp

IN_CHANNELS = 8  # masked RGB (hole zeroed), mask, reference RGB, reference validity


@dataclass
class GeneratorOutput:
    coarse: torch.Tensor   # coarse net's raw prediction, [-1, 1]
    refined: torch.Tensor  # refinement's raw prediction, [-1, 1]
    result: torch.Tensor   # refined composited into the known pixels, [-1, 1]


def _encoder(cin: int, c: int) -> nn.Sequential:
    """Two down-samplings to 1/4 resolution with 4c channels."""
    return nn.Sequential(
        GatedConv2d(cin, c, 5),
        GatedConv2d(c, 2 * c, 3, stride=2),
        GatedConv2d(2 * c, 2 * c, 3),
        GatedConv2d(2 * c, 4 * c, 3, stride=2),
        GatedConv2d(4 * c, 4 * c, 3),
    )


def _dilated(c4: int) -> nn.Sequential:
    return nn.Sequential(*[GatedConv2d(c4, c4, 3, dilation=d) for d in (2, 4, 8, 16)],
                         GatedConv2d(c4, c4, 3), GatedConv2d(c4, c4, 3))


def _decoder(cin: int, c: int) -> nn.Sequential:
    return nn.Sequential(
        GatedUp(cin, 2 * c),
        GatedConv2d(2 * c, 2 * c, 3),
        GatedUp(2 * c, c),
        GatedConv2d(c, c // 2, 3),
    )


class CoarseNet(nn.Module):
    """Gated convs, two down-samplings, dilated gated convs (2, 4, 8, 16), two up-samplings, tanh."""

    def __init__(self, c: int = 32):
        super().__init__()
        self.body = nn.Sequential(_encoder(IN_CHANNELS, c), _dilated(4 * c), _decoder(4 * c, c))
        self.out = nn.Conv2d(c // 2, 3, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.out(self.body(x)))


class MaskedSelfAttention(nn.Module):
    """Multi-head self-attention over a 1/8-resolution feature map in which hole pixels may
    only borrow from known pixels (the role of DeepFill v2's contextual attention)."""

    def __init__(self, channels: int, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(x).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        keep = known.reshape(b, 1, 1, h * w) > 0.5
        keep = keep | ~keep.any(dim=-1, keepdim=True)  # a fully unknown map may attend anywhere
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class RefineNet(nn.Module):
    """A dilated gated-conv branch and an attention branch, merged and decoded into a correction."""

    def __init__(self, c: int = 32):
        super().__init__()
        self.conv_branch = nn.Sequential(_encoder(IN_CHANNELS, c), _dilated(4 * c))
        self.attn_encoder = _encoder(IN_CHANNELS, c)
        self.attn_down = GatedConv2d(4 * c, 4 * c, 3, stride=2)
        self.attention = MaskedSelfAttention(4 * c)
        self.attn_up = GatedUp(4 * c, 4 * c)
        self.merge = GatedConv2d(8 * c, 4 * c, 3)
        self.decoder = _decoder(4 * c, c)
        self.delta = nn.Conv2d(c // 2, 3, 3, padding=1)
        nn.init.zeros_(self.delta.weight)
        nn.init.zeros_(self.delta.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        a = self.conv_branch(x)
        feat = self.attn_down(self.attn_encoder(x))
        known = 1.0 - F.adaptive_max_pool2d(mask, feat.shape[-2:])
        b = self.attn_up(self.attention(feat, known))
        return self.delta(self.decoder(self.merge(torch.cat([a, b], dim=1))))


class Generator(nn.Module):
    """Inputs in [0, 1] (as the pyfunc model takes them); outputs in [-1, 1]."""

    def __init__(self, channels: int = 32):
        super().__init__()
        self.coarse = CoarseNet(channels)
        self.refine = RefineNet(channels)

    def forward(self, masked: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor,
                reference_valid: torch.Tensor) -> GeneratorOutput:
        known = 1.0 - mask
        image = (masked * 2 - 1) * known
        ref = (reference * 2 - 1) * reference_valid
        x = torch.cat([image, mask, ref, reference_valid], dim=1)
        coarse = self.coarse(x)
        composed = image + coarse * mask
        # the paste baseline: the reference where it is valid, the coarse guess elsewhere
        base = ref * reference_valid + coarse * (1 - reference_valid)
        delta = self.refine(torch.cat([composed, mask, ref, reference_valid], dim=1), mask)
        refined = (base + delta).clamp(-1, 1)
        return GeneratorOutput(coarse, refined, image + refined * mask)


def push_pull_fill(image: torch.Tensor, known: torch.Tensor, levels: int = 7) -> torch.Tensor:
    """Unknown pixels filled from the known ones around them, coarse to fine (push-pull: a
    known-weighted image pyramid, each level's holes taken from the level below). A smooth,
    differentiable stand-in for Telea inside the network: where no reference reaches, the small
    generator's correction starts from this instead of from zeros."""
    pyramid = [(image * known, known)]
    for _ in range(levels):
        img, w = pyramid[-1]
        if min(img.shape[-2:]) < 2:
            break
        pyramid.append((F.avg_pool2d(img, 2), F.avg_pool2d(w, 2)))
    img, w = pyramid[-1]
    filled = img / w.clamp_min(1e-6)
    for img, w in reversed(pyramid[:-1]):
        up = F.interpolate(filled, size=img.shape[-2:], mode="bilinear", align_corners=False)
        a = w.clamp(0, 1)
        filled = img / w.clamp_min(1e-6) * (w > 1e-6) * a + up * (1 - a * (w > 1e-6))
    return filled


class SmallGenerator(nn.Module):
    """The CPU-sized generator (about 0.7 M parameters at c=24): one gated-conv U-Net that predicts
    a residual over the paste. The paste is the colour-matched reference where it is valid and a
    push-pull fill of everything known elsewhere; the last layer starts at zero, so an untrained
    network is exactly that paste (a 7 M network trained for 30 CPU-minutes never caught up with
    it; a small residual one beats it within minutes). Same inputs and outputs as `Generator`;
    `coarse` is the paste it started from."""

    def __init__(self, channels: int = 24):
        super().__init__()
        c = channels
        cin = 3 + 3 + 1 + 1  # paste, reference (valid part), mask, reference validity
        self.enc1 = nn.Sequential(GatedConv2d(cin, c, 5), GatedConv2d(c, c, 3))
        self.enc2 = nn.Sequential(GatedConv2d(c, 2 * c, 3, stride=2), GatedConv2d(2 * c, 2 * c, 3))
        self.enc3 = nn.Sequential(GatedConv2d(2 * c, 4 * c, 3, stride=2),
                                  *[GatedConv2d(4 * c, 4 * c, 3, dilation=d) for d in (2, 4, 8, 1)])
        self.up2 = GatedUp(4 * c, 2 * c)
        self.dec2 = GatedConv2d(4 * c, 2 * c, 3)
        self.up1 = GatedUp(2 * c, c)
        self.dec1 = GatedConv2d(2 * c, c, 3)
        self.delta = nn.Conv2d(c, 3, 3, padding=1)
        nn.init.zeros_(self.delta.weight)
        nn.init.zeros_(self.delta.bias)

    def forward(self, masked: torch.Tensor, mask: torch.Tensor, reference: torch.Tensor,
                reference_valid: torch.Tensor) -> GeneratorOutput:
        known = 1.0 - mask
        image = (masked * 2 - 1) * known
        ref = (reference * 2 - 1) * reference_valid
        seen = known + mask * reference_valid  # known pixels, and the reference in the hole
        paste = image + ref * mask
        base = paste * seen + push_pull_fill(paste, seen) * (1 - seen)
        x = torch.cat([base, ref, mask * 2 - 1, reference_valid * 2 - 1], dim=1)
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        e3 = self.enc3(e2)
        d2 = self.dec2(torch.cat([self.up2(e3), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        refined = (base + self.delta(d1)).clamp(-1, 1)
        return GeneratorOutput(base, refined, image + refined * mask)


GENERATORS = {"small": SmallGenerator, "full": Generator}


def build_generator(kind: str = "full", channels: int | None = None) -> nn.Module:
    """A generator of the family by name (`small` for CPUs, `full` DeepFill-v2 sized for GPUs)."""
    if kind not in GENERATORS:
        raise ValueError(f"unknown generator {kind!r}: use {' or '.join(GENERATORS)}")
    return GENERATORS[kind]() if channels is None else GENERATORS[kind](channels)


class Discriminator(nn.Module):
    """SN-PatchGAN: six spectral-norm convs, kernel 5, stride 2, on image plus mask."""

    def __init__(self, c: int = 64):
        super().__init__()
        chans = [4, c, 2 * c, 4 * c, 4 * c, 4 * c, 4 * c]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(chans, chans[1:])):
            layers.append(spectral_norm(nn.Conv2d(a, b, 5, 2, padding=2)))
            if i < len(chans) - 2:
                layers.append(nn.LeakyReLU(0.2))
        self.net = nn.Sequential(*layers)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([image, mask * 2 - 1], dim=1))
