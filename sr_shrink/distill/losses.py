"""Losses of the distillation game: KD for the student, L_G (adversarial + consistency + priors) for G."""

from __future__ import annotations

import math

import torch

from ..resize import downscale


def kd_loss(student_out: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Return the mean L1 (or Charbonnier, eps 1e-3) distance between student output and target."""
    diff = student_out - target
    if kind == "l1":
        return diff.abs().mean()
    if kind == "charbonnier":
        return torch.sqrt(diff * diff + 1e-6).mean()
    raise ValueError(f"unknown kd loss {kind!r}; use l1 or charbonnier")


def natural_stats_loss(x: torch.Tensor) -> torch.Tensor:
    """Return a penalty pulling a batch towards simple natural-image statistics.

    Two terms: per-image luminance std near 0.2 (neither flat nor saturated) and a mean absolute
    gradient near 0.04 (sparse edges, not stripes); both measured on the LR patch.
    """
    lum = x.mean(dim=1)
    std = lum.std(dim=(1, 2))
    grad = (lum[:, 1:, :] - lum[:, :-1, :]).abs().mean(dim=(1, 2)) + (lum[:, :, 1:] - lum[:, :, :-1]).abs().mean(
        dim=(1, 2))
    return (std - 0.2).abs().mean() + (grad / 2 - 0.04).abs().mean() * math.sqrt(10)


def diversity_loss(x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Return a mode-seeking penalty: small when different latents give different images.

    The ratio of image distance to latent distance over neighbouring pairs in the batch (MSGAN), inverted.
    """
    dx = (x - x.roll(1, dims=0)).abs().mean(dim=(1, 2, 3))
    dz = (z - z.roll(1, dims=0)).abs().flatten(1).mean(dim=1)
    return 1.0 / ((dx / dz).mean() + 1e-5)


def generator_loss(x: torch.Tensor, z: torch.Tensor, teacher_out: torch.Tensor, student_out: torch.Tensor,
                   scale: int, w_r: float, w_div: float = 0.0, w_nat: float = 0.0, adversarial: bool = True,
                   kd_kind: str = "l1") -> tuple[torch.Tensor, dict[str, float]]:
    """Return (L_G, parts) with L_G = -log(L_KD + 1) + w_R ||R(T(x)) - x||_1 (+ diversity + natural priors).

    R is the differentiable MATLAB bicubic downscale, so both terms send gradient to the generator.
    """
    l_kd = kd_loss(student_out, teacher_out, kd_kind)
    l_r = (downscale(teacher_out, scale) - x).abs().mean()
    loss = w_r * l_r
    if adversarial:
        loss = loss - torch.log(l_kd + 1)
    parts = {"g_kd": l_kd.item(), "g_r": l_r.item()}
    if w_div:
        l_div = diversity_loss(x, z)
        loss = loss + w_div * l_div
        parts["g_div"] = l_div.item()
    if w_nat:
        l_nat = natural_stats_loss(x)
        loss = loss + w_nat * l_nat
        parts["g_nat"] = l_nat.item()
    return loss, parts
