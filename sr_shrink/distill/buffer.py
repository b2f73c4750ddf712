"""A replay buffer of (input, target) pairs: each teacher forward feeds several student steps, and earlier
generator samples keep being replayed so students do not forget them."""

from __future__ import annotations

import torch


class ReplayBuffer:
    """Circular store of (LR input, target) pairs, sampled uniformly with random flips and 90-degree turns."""

    def __init__(self, capacity: int):
        self.capacity, self.size, self.pos = capacity, 0, 0
        self.x: torch.Tensor | None = None
        self.t: torch.Tensor | None = None

    def add(self, x: torch.Tensor, t: torch.Tensor) -> None:
        """Store a batch of pairs, overwriting the oldest once full."""
        x, t = x.detach(), t.detach()
        if self.x is None:
            self.x = x.new_empty((self.capacity, *x.shape[1:]))
            self.t = t.new_empty((self.capacity, *t.shape[1:]))
        idx = (torch.arange(x.shape[0]) + self.pos) % self.capacity
        self.x[idx.to(x.device)], self.t[idx.to(t.device)] = x, t
        self.pos = int((self.pos + x.shape[0]) % self.capacity)
        self.size = min(self.capacity, self.size + x.shape[0])

    def state_dict(self) -> dict:
        """Return the buffer's contents and write position (CPU tensors), enough to continue bit-exactly."""
        cpu = (lambda v: None if v is None else v.detach().cpu().clone())  # noqa: E731
        return {"capacity": self.capacity, "size": self.size, "pos": self.pos, "x": cpu(self.x), "t": cpu(self.t)}

    def load_state_dict(self, state: dict, device: torch.device | str = "cpu") -> None:
        """Restore what :meth:`state_dict` returned, onto ``device``."""
        self.capacity, self.size, self.pos = int(state["capacity"]), int(state["size"]), int(state["pos"])
        self.x = None if state["x"] is None else state["x"].to(device)
        self.t = None if state["t"] is None else state["t"].to(device)

    def sample(self, n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``n`` stored pairs, each pair flipped/rotated the same way."""
        idx = torch.randint(self.size, (n,), generator=g).to(self.x.device)
        x, t = self.x[idx], self.t[idx]
        k = int(torch.randint(4, (1,), generator=g))
        if k:
            x, t = torch.rot90(x, k, dims=(2, 3)), torch.rot90(t, k, dims=(2, 3))
        if int(torch.randint(2, (1,), generator=g)):
            x, t = x.flip(-1), t.flip(-1)
        return x.contiguous(), t.contiguous()
