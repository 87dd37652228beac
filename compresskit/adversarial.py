"""Adversarial distillation: a loss with its own discriminator and optimizer step (the GAN variants tried
for ST-MFNet Mini). :class:`GANLoss` is registered as ``"gan"`` in :mod:`compresskit.losses`.

Protocol the distiller relies on: an :class:`AdversarialLoss` returns the student's (generator's) loss from
``forward(pred, reference)``, remembers the pairs it saw while gradients were on, and
``discriminator_step(ctx)`` trains the discriminator on them once per student step. ``train_state`` /
``load_train_state`` put the discriminator and its optimizer into the run's checkpoints.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from compresskit.training.distributed import DistContext, average_gradients


class PatchDiscriminator(nn.Module):
    """A small fully convolutional discriminator: one real/fake logit per image patch (pix2pix-style)."""

    def __init__(self, in_channels: int = 3, width: int = 32, depth: int = 3):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for i in range(depth):
            layers += [nn.Conv2d(c, width * 2**i, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
            c = width * 2**i
        layers.append(nn.Conv2d(c, 1, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class AdversarialLoss(nn.Module):
    """Base of discriminator-based losses. Subclasses define the two objectives on discriminator logits:
    ``generator_loss(d_fake)`` (what the student minimises) and ``discriminator_loss(d_real, d_fake)``."""

    def __init__(self, discriminator: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                 lr: float = 1e-4, betas: tuple[float, float] = (0.5, 0.999)):
        super().__init__()
        if not isinstance(discriminator, nn.Module):
            raise TypeError(f"discriminator must be an nn.Module, got {type(discriminator).__name__}")
        self.discriminator = discriminator
        self.optimizer = optimizer or torch.optim.Adam(discriminator.parameters(), lr=lr, betas=betas)
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []

    def generator_loss(self, d_fake: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def discriminator_loss(self, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, pred: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():  # training, not validation: keep the pair for the discriminator step
            self._pending.append((pred.detach(), reference.detach()))
        return self.generator_loss(self.discriminator(pred))

    def discriminator_step(self, ctx: DistContext | None = None) -> float:
        """One optimizer step of the discriminator on the pairs seen since the last step; its loss."""
        pairs, self._pending = self._pending, []
        if not pairs:
            return float("nan")
        self.optimizer.zero_grad(set_to_none=True)  # also drops what the student's backward left here
        total = 0.0
        for fake, real in pairs:
            loss = self.discriminator_loss(self.discriminator(real), self.discriminator(fake)) / len(pairs)
            loss.backward()
            total += float(loss.detach())
        average_gradients(self.discriminator.parameters(), ctx or DistContext())
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    def train_state(self) -> dict[str, Any]:
        return {"discriminator": self.discriminator.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_train_state(self, state: dict[str, Any]) -> None:
        self.discriminator.load_state_dict(state["discriminator"])
        self.optimizer.load_state_dict(state["optimizer"])


class GANLoss(AdversarialLoss):
    """Non-saturating GAN loss (Goodfellow et al. 2014), with σ the logistic function:
    student ``−log σ(D(S))`` = softplus(−D(S)); discriminator ``−log σ(D(real)) − log(1 − σ(D(S)))``
    = softplus(−D(real)) + softplus(D(S)). "real" is the teacher's output (or the ground truth).
    """

    def __init__(self, discriminator: nn.Module | None = None, in_channels: int = 3, lr: float = 1e-4,
                 betas: tuple[float, float] = (0.5, 0.999), optimizer: torch.optim.Optimizer | None = None):
        super().__init__(discriminator or PatchDiscriminator(in_channels), optimizer, lr=lr, betas=betas)

    def generator_loss(self, d_fake: torch.Tensor) -> torch.Tensor:
        return F.softplus(-d_fake).mean()

    def discriminator_loss(self, d_real: torch.Tensor, d_fake: torch.Tensor) -> torch.Tensor:
        return F.softplus(-d_real).mean() + F.softplus(d_fake).mean()
