"""The transparency-log evidence of an export: one checkpoint per stream and every full
record's inclusion proof against it, gathered from the stream's TlogService.

An export may carry up to `max_export_records` records, and TlogService.inclusion answers
one leaf per call (a few milliseconds each, whatever the database). So proofs are built as
a tlog-tiles client builds them: each record's leaf index is derived from the chain (the
log's leaves are the accepted records in sequence order), the proof's nodes are folded from
the tiles holding them (a few hundred leaves per call), and every proof so built is checked
against the checkpoint's root with the record's stored event.hash before it is used.
Whatever that does not settle (a record whose stored hash is not its leaf, a verdict the
derivation cannot account for) is asked of TlogService.inclusion, one record at a time: the
service's own answer, which the bundle then carries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from audit.errors import ConflictError, NotFoundError
from audit.exports.tlog import LogProof, StreamLog
from audit.integrity.merkle import (
    HASH_SIZE,
    TILE_HEIGHT,
    TILE_WIDTH,
    NodeId,
    ProofError,
    inclusion_plan,
    leaf_hash,
    materialize,
    needed,
    node_hash,
    tile_width,
    verify_inclusion,
)
from audit.integrity.notes import parse_checkpoint, parse_note
from audit.settings import AuditSettings
from audit.store.protocol import Verdict
from audit.tlog.service import TlogService, origin_of


@dataclass(frozen=True, slots=True)
class Placed:
    """A record of an exported range, as ingest placed it in the chain (first per
    sequence: a fork's rival is no part of it)."""

    sequence: int
    event_hash: str  # as stored, hex
    verdict: str
    failure: str | None
    full: bool  # the bundle carries it in full (selected, or a checkpoint)


def stream_log(
    tlog: TlogService,
    settings: AuditSettings,
    tenant: str,
    stream: str,
    records: Sequence[Placed],
) -> StreamLog:
    """One checkpoint of the stream's log and every full record's proof against it.

    The newest checkpoint (cosigned when witnesses are configured) when it covers every
    leaf to prove; otherwise one signed now at the log's size, so that no record waits for
    the next checkpoint or the witnesses (the manifest then says it is not cosigned).
    """
    records = sorted(records, key=lambda r: r.sequence)
    try:
        note: str | None = tlog.checkpoint(tenant, stream)
    except NotFoundError:
        note = None  # no log yet, or nothing (cosigned) signed yet
    if note is not None:
        found = _Prover(tlog, tenant, stream, note, records).run(complete=True)
        if found is not None:
            return found
    try:
        row = tlog.sign_now(tenant, stream)
    except NotFoundError as exc:
        origin = origin_of(settings, tenant, stream)
        absent = {r.sequence: _absent(r, exc.message) for r in records if r.full}
        return StreamLog(origin, None, {}, absent)
    found = _Prover(tlog, tenant, stream, row.cosigned_note or row.note, records).run(
        complete=False
    )
    assert found is not None  # complete=False never gives up
    return found


class _NotCovered(Exception):
    """A leaf to prove is past the checkpoint."""


class _Prover:
    def __init__(
        self, tlog: TlogService, tenant: str, stream: str, note: str, records: Sequence[Placed]
    ) -> None:
        self.tlog = tlog
        self.tenant = tenant
        self.stream = stream
        self.note = note
        self.records = records
        checkpoint = parse_checkpoint(parse_note(note).text)
        self.origin = checkpoint.origin
        self.size = checkpoint.size
        self.root = checkpoint.root_hash
        self._tiles: dict[tuple[int, int], list[bytes]] = {}
        self._nodes: dict[NodeId, bytes] = {}

    def run(self, *, complete: bool) -> StreamLog | None:
        """The evidence, or None when `complete` and a leaf is past the checkpoint."""
        try:
            return self._run(complete)
        except _NotCovered:
            return None

    def _run(self, complete: bool) -> StreamLog:
        first = self._first_leaf()
        since = 0 if first is None else first[1]
        # Ingest appends the accepted records in sequence order, one leaf each: a record's
        # index is the first one's plus its rank among them. Corrected by the service's
        # answer wherever the store says otherwise than the log (then re-anchored there).
        accepted = [r for r in self.records if r.verdict == Verdict.OK and r.sequence >= since]
        rank = {r.sequence: n for n, r in enumerate(accepted)}
        base = self._index_of(accepted[0], complete) if accepted else None
        proofs: dict[int, LogProof] = {}
        absent: dict[int, str] = {}
        for r in self.records:
            if not r.full:
                continue
            if first is not None and r.verdict == Verdict.OK and r.sequence < first[1]:
                absent[r.sequence] = (
                    f"accepted before the stream's log existed (its first leaf is the record "
                    f"at sequence {first[1]})"
                )
                continue
            n = rank.get(r.sequence)
            if n is not None and base is not None:
                i = base + n
                if i >= self.size and complete:
                    raise _NotCovered
                proof = self._proof(i, r.event_hash) if i < self.size else None
                if proof is not None:
                    proofs[r.sequence] = LogProof(i, proof)
                    continue
            got = self._ask(r, complete, proofs, absent)
            if got is not None and n is not None:
                base = got - n
        return StreamLog(self.origin, self.note, proofs, absent)

    def _ask(
        self,
        r: Placed,
        complete: bool,
        proofs: dict[int, LogProof],
        absent: dict[int, str],
    ) -> int | None:
        """The service's own answer for one record, into `proofs` or `absent`; its leaf
        index, when it has one."""
        try:
            got = self.tlog.inclusion(self.tenant, self.stream, sequence=r.sequence, size=self.size)
        except NotFoundError as exc:
            absent[r.sequence] = _absent(r, exc.message)
            return None
        except ConflictError:
            if complete:
                raise _NotCovered from None
            # Logged after the checkpoint just signed (ingest goes on during an export).
            absent[r.sequence] = f"logged after the checkpoint at size {self.size}"
            return None
        # Kept whether or not the leaf is the stored record's event.hash: a record that is
        # not the leaf the log holds is what the proof shows, and the writer says so.
        proofs[r.sequence] = LogProof(got.index, tuple(got.hashes))
        return got.index

    def _first_leaf(self) -> tuple[int, int] | None:
        """(0, sequence) of the log's first leaf; None when it is no longer served (its
        record was purged: every record kept is then asked for on its own)."""
        try:
            got = self.tlog.inclusion(self.tenant, self.stream, index=0, size=self.size)
        except NotFoundError:
            return None
        return 0, got.sequence

    def _index_of(self, r: Placed, complete: bool) -> int | None:
        try:
            got = self.tlog.inclusion(self.tenant, self.stream, sequence=r.sequence, size=self.size)
        except NotFoundError:
            return None
        except ConflictError:
            if complete:
                raise _NotCovered from None
            return None
        return got.index

    def _proof(self, index: int, event_hash: str) -> tuple[bytes, ...] | None:
        """The proof of leaf `index` from tiles, when it leads from `event_hash` to the
        checkpoint's root (else the derived index is not the record's: None)."""
        plan = inclusion_plan(index, self.size)
        try:
            hashes = materialize(plan, {n: self._node(n) for n in needed(plan)})
            verify_inclusion(
                leaf_hash(bytes.fromhex(event_hash)), index, self.size, hashes, self.root
            )
        except (ProofError, NotFoundError, ValueError, IndexError):
            return None
        return tuple(hashes)

    def _node(self, node: NodeId) -> bytes:
        # A node between two tile levels is folded from its children, down to the tile
        # level below it; memoised, since neighbouring records' proofs share most nodes.
        found = self._nodes.get(node)
        if found is None:
            tile_level, depth = divmod(node.level, TILE_HEIGHT)
            if depth == 0:
                tile, offset = divmod(node.index, TILE_WIDTH)
                found = self._tile(tile_level, tile)[offset]
            else:
                found = node_hash(
                    self._node(NodeId(node.level - 1, 2 * node.index)),
                    self._node(NodeId(node.level - 1, 2 * node.index + 1)),
                )
            self._nodes[node] = found
        return found

    def _tile(self, level: int, index: int) -> list[bytes]:
        key = (level, index)
        if key not in self._tiles:
            width = tile_width(level, index, self.size)
            data = self.tlog.tile(
                self.tenant, self.stream, level, index, None if width == TILE_WIDTH else width
            )
            self._tiles[key] = [data[k : k + HASH_SIZE] for k in range(0, len(data), HASH_SIZE)]
        return self._tiles[key]


def _absent(record: Placed, why: str) -> str:
    if record.verdict != Verdict.OK:
        return (
            f"ingest placed it in the chain as {record.verdict}"
            + (f" ({record.failure})" if record.failure else "")
            + "; only records accepted as ok are logged"
        )
    return why
