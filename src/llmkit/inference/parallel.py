"""Data-parallel batch jobs under `llmkit launch` (RANK, WORLD_SIZE and MASTER_ADDR/PORT from its launcher): every
rank loads the whole model and takes whole batches of the one-process run, round robin (batch b -> rank b % N), so
each batch holds the same lines, padded the same, as in one process. The job itself (part files, the merge) is
batch.write_job's; this module is the world: who is who, and the two collective steps. No gradients, so no DDP
wrapper: gloo only carries the start and the final counts."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

# the first rank done waits at the final gather for the slowest one: as long as a big batch may run
WAIT_FOR_RANKS = timedelta(days=7)


@dataclass(frozen=True)
class Ranks:
    rank: int
    world: int

    @classmethod
    def from_env(cls) -> Ranks | None:
        """This process's place in a launcher's world, or None in a plain one-process run."""
        world = int(os.environ.get("WORLD_SIZE") or 1)
        return cls(int(os.environ.get("RANK") or 0), world) if world > 1 else None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def part(self, target: Path, rank: int | None = None) -> Path:
        """OUTPUT.rank-K-of-N.jsonl: the world size is in the name, so a rerun with another N never resumes it."""
        rank = self.rank if rank is None else rank
        return target.with_name(f"{target.stem}.rank-{rank}-of-{self.world}{target.suffix}")

    def share(self, records: list, batch_size: int) -> list:
        """This rank's whole batches of the one-process run."""
        return [r for i, r in enumerate(records) if (i // batch_size) % self.world == self.rank]

    @contextlib.contextmanager
    def joined(self):
        """The gloo process group for the job (unless the caller already has one)."""
        import torch.distributed as dist

        owned = not dist.is_initialized()
        if owned:
            dist.init_process_group("gloo", timeout=WAIT_FOR_RANKS)
        try:
            yield self
        finally:
            if owned:
                dist.destroy_process_group()

    def from_main(self, value: Any) -> Any:
        """RANK 0's `value`, on every rank."""
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, value: Any) -> list:
        """Every rank's `value`, in rank order, on every rank; returns when all of them got there."""
        import torch.distributed as dist

        values = [None] * self.world
        dist.all_gather_object(values, value)
        return values
