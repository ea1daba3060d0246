"""The benchmark grids, and configurations given on the command line."""

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
    batch_first: bool = False
    hx: bool = False  # a decode row: the state given, no gradient (eval, no_grad)

    @property
    def name(self) -> str:
        parts = [f"B={self.B} T={self.T} I={self.I} H={self.H}"]
        if self.layers > 1 or self.bidirectional:
            parts.append(f"{self.layers}L{' bidir' if self.bidirectional else ''}")
        if self.packed:
            parts.append("packed")
        if self.proj:
            parts.append(f"proj={self.proj}")
        if self.batch_first:
            parts.append("batch_first")
        if self.hx:
            parts.append("hx")
        return ", ".join(parts)

    @classmethod
    def parse(cls, text: str) -> Config:
        """From "B=5,T=40,I=24,H=48,layers=2,bidirectional,packed,proj=8,batch_first"
        (B, T, I and H required; "hx" makes it a decode row)."""
        sizes = {"B", "T", "I", "H", "layers", "proj"}
        flags = {"bidirectional", "packed", "batch_first", "hx"}
        values = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            key, _, value = item.partition("=")
            if key in flags and not value:
                values[key] = True
            elif key in sizes and value.isdigit() and int(value) > 0:
                values[key] = int(value)
            else:
                raise ValueError(f"{item!r}: expected one of {sorted(sizes)} as key=positive "
                                 f"integer, or a flag among {sorted(flags)}")
        missing = {"B", "T", "I", "H"} - values.keys()
        if missing:
            raise ValueError(f"{text!r} lacks {', '.join(sorted(missing))}")
        return cls(**values)


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
# Decode steps: one step (or a chunk of four) with the state carried in hx, no
# gradient, as a sampler or a streaming model runs (--decode).
DECODE = [
    *(Config(B, 1, H, H, layers=L, hx=True) for L in (1, 2) for H in (256, 512, 1024)
      for B in (1, 8)),
    Config(1, 4, 512, 512, layers=2, hx=True),
]
# `make bench`: every kind of row, the smaller sizes.
QUICK = [GRID[0], GRID[1], GRID[3], GRID[5], GRID[6], GRID[7], GRID[8], DECODE[8], DECODE[12]]

# On a GPU: batches from one sequence (launches dominate) to 256, two hidden
# sizes, short and long sequences, padded and packed.
CUDA_GRID = [
    *(Config(B, 100, H, H) for H in (256, 1024) for B in (1, 8, 64, 256)),
    *(Config(B, 1000, H, H) for H in (256, 1024) for B in (8, 256)),
    *(Config(64, 100, H, H, packed=True) for H in (256, 1024)),
]
