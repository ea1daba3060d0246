"""The benchmark grid and the work (flops) each configuration does."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class Config:
    B: int
    T: int
    I: int  # noqa: E741
    H: int
    layers: int = 1
    bidirectional: bool = False
    packed: bool = False  # random lengths in [T/2, T]
    proj: int = 0

    @property
    def name(self) -> str:
        parts = [f"B={self.B} T={self.T} I={self.I} H={self.H}"]
        if self.layers > 1 or self.bidirectional:
            parts.append(f"{self.layers}L{' bidir' if self.bidirectional else ''}")
        if self.packed:
            parts.append("packed")
        if self.proj:
            parts.append(f"proj={self.proj}")
        return ", ".join(parts)

    def forward_flops(self, rows: int) -> int:
        """Multiply-adds x2 of the products (the cell's elementwise work is not counted)."""
        directions = 2 if self.bidirectional else 1
        out = self.proj or self.H
        flops = 0
        for layer in range(self.layers):
            inputs = self.I if layer == 0 else directions * out
            per_row = 2 * 4 * self.H * (inputs + out) + 2 * self.H * out * bool(self.proj)
            flops += directions * rows * per_row
        return flops


GRID = [
    Config(1, 100, 64, 64),
    Config(32, 100, 256, 256),
    Config(64, 100, 512, 512),
    Config(8, 500, 128, 128),
    Config(128, 35, 1024, 1024),
    Config(32, 100, 256, 256, layers=2, bidirectional=True),
    Config(32, 100, 256, 256, packed=True),
    Config(32, 100, 256, 256, proj=128),
    # Few sequences per thread, large hidden size.
    Config(2, 100, 512, 512),
    Config(4, 100, 1024, 1024),
    Config(16, 100, 512, 512),
]
# `make bench`: every kind of row, the smaller sizes.
QUICK = [GRID[0], GRID[1], GRID[3], GRID[5], GRID[6], GRID[7], GRID[8]]
