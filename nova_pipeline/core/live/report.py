"""What one live update did (:class:`UpdateReport`): the line ``nova watch`` prints, its ``--json``, and the
metadata of the runless materializations it reports."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["UpdateReport"]


@dataclass
class UpdateReport:
    """What one live update did. Times are seconds; ``first_event_at`` and ``searchable_at`` are
    ``time.time()`` wall clock (comparable across processes), the rest are durations."""

    kind: str = "update"  # update, catch-up, or unchanged
    files: dict[str, int] = field(default_factory=dict)  # added / changed / deleted
    paths: list[str] = field(default_factory=list)  # the changed paths (at most 20)
    chunks: int = 0  # chunks in the index after the update
    chunks_added: int = 0
    chunks_deleted: int = 0
    embedded: int = 0
    cache_hits: int = 0
    lexical: str = ""  # delta, rebuilt, or unchanged
    first_event_at: float = 0.0
    searchable_at: float = 0.0
    to_searchable_s: float = 0.0  # from the first event (or the update's start) to searchable
    update_s: float = 0.0  # the update itself, lock wait included
    total_s: float = 0.0  # until the tables and the store are written too
    refused: str = ""  # the guard's message when it refused the update (nothing was written)
    phases: dict[str, float] = field(default_factory=dict)  # seconds per step: plan, lock, write, lexical

    @property
    def changed(self) -> bool:
        return self.kind != "unchanged" and not self.refused

    def line(self) -> str:
        """One line for a terminal: what changed, what was embedded and deleted, and how long it took."""
        if self.refused:
            return f"refused: {self.refused}"
        if self.kind == "unchanged":
            return "no change to the index"
        what = ", ".join(f"{k} {v}" for k, v in self.files.items() if v) or "no file"
        shown = ", ".join(self.paths[:3]) + (f" (+{len(self.paths) - 3})" if len(self.paths) > 3 else "")
        return (
            f"{self.kind}: {what}{' (' + shown + ')' if shown else ''}: +{self.chunks_added} -"
            f"{self.chunks_deleted} chunks ({self.embedded} embedded, {self.cache_hits} from the cache), "
            f"lexical {self.lexical}; searchable in {self.to_searchable_s * 1000:.0f} ms"
        )

    def metadata(self) -> dict:
        """The numbers as plain values (for the runless materializations and ``--json``)."""
        return {
            "kind": self.kind,
            **{f"files_{k}": v for k, v in self.files.items()},
            "chunks": self.chunks,
            "chunks_added": self.chunks_added,
            "chunks_deleted": self.chunks_deleted,
            "embedded": self.embedded,
            "cache_hits": self.cache_hits,
            "lexical": self.lexical,
            "to_searchable_s": round(self.to_searchable_s, 4),
            "update_s": round(self.update_s, 4),
            "total_s": round(self.total_s, 4),
            "searchable_at": round(self.searchable_at, 4),
            "first_event_at": round(self.first_event_at, 4),
            **{f"{k}_s": round(v, 4) for k, v in self.phases.items()},
        }
