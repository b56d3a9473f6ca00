"""RFC 9162 §2.1 Merkle trees (SHA-256, as RFC 6962) and the C2SP tlog-tiles geometry.

A store keeps only perfect subtree nodes; every proof element is then the fold of at most a
few of them, so proofs are planned here (which nodes, in which order) and materialised from
whatever mapping the store returns. Verification does not use the plans: it is the short bit
walk of RFC 9162 §2.1.3.2 and §2.1.4.2, with the proof length checked up front so that each
failure has one precise kind.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

from cryptography.hazmat.primitives import hashes

from audit.integrity.digest import sha256
from audit.integrity.errors import FFAuditError

HASH_SIZE: Final = 32
EMPTY_ROOT: Final[bytes] = sha256(b"")

# Contexts that have already absorbed the domain-separation byte: copying one is as cheap as
# digest.sha256 (measured: ~650 ns a node either way, the cost being cryptography's call
# overhead, not SHA-256), and leaf_hash then never copies a large entry to prefix it.
_LEAF_CONTEXT: Final = hashes.Hash(hashes.SHA256())
_LEAF_CONTEXT.update(b"\x00")
_NODE_CONTEXT: Final = hashes.Hash(hashes.SHA256())
_NODE_CONTEXT.update(b"\x01")
_new_leaf = _LEAF_CONTEXT.copy
_new_node = _NODE_CONTEXT.copy


def leaf_hash(entry: bytes) -> bytes:
    h = _new_leaf()
    h.update(entry)
    return h.finalize()


def node_hash(left: bytes, right: bytes) -> bytes:
    h = _new_node()
    h.update(left + right)
    return h.finalize()


@dataclass(frozen=True, slots=True, order=True)
class NodeId:
    """The perfect subtree of 2**level leaves covering [index << level, (index+1) << level)."""

    level: int
    index: int

    @property
    def begin(self) -> int:
        return self.index << self.level

    @property
    def end(self) -> int:
        return (self.index + 1) << self.level


Plan = tuple[tuple[NodeId, ...], ...]


def decompose(begin: int, end: int) -> tuple[NodeId, ...]:
    """The compact range of [begin, end): its maximal perfect subtrees, left to right."""
    if begin < 0 or begin > end:
        raise ValueError(f"not a range of leaves: [{begin}, {end})")
    out: list[NodeId] = []
    while begin < end:
        # The biggest node starting at `begin` is bounded by its alignment and by what is left.
        level = (end - begin).bit_length() - 1
        if begin:
            level = min(level, (begin & -begin).bit_length() - 1)
        out.append(NodeId(level, begin >> level))
        begin += 1 << level
    return tuple(out)


def root_nodes(size: int) -> tuple[NodeId, ...]:
    return decompose(0, size)


def fold(hashes: Sequence[bytes]) -> bytes:
    """MTH of a range from its compact range's hashes: the nodes shrink left to right, so the
    RFC's split (largest power of two first) pairs each with the fold of everything after it."""
    if not hashes:
        raise ValueError("fold of no hashes: an empty range has no subtree hash")
    acc = hashes[-1]
    for h in reversed(hashes[:-1]):
        acc = node_hash(h, acc)
    return acc


def _element(begin: int, end: int) -> tuple[NodeId, ...]:
    # Most proof elements are one perfect node; only a range cut by the tree's last leaf (the
    # RFC's MTH(D[k:n]) on the right edge) needs its compact range.
    width = end - begin
    if width & (width - 1) == 0 and begin & (width - 1) == 0:
        level = width.bit_length() - 1
        return (NodeId(level, begin >> level),)
    return decompose(begin, end)


def inclusion_plan(index: int, size: int) -> Plan:
    """PATH(index, D[size]) of RFC 9162 §2.1.3.1, leaf side first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of size {size}")
    # Below `inner` the paths to `index` and to the last leaf differ, so both siblings can
    # occur; above it the path is the tree's right edge, where only left siblings exist.
    inner = (index ^ (size - 1)).bit_length()
    plan: list[tuple[NodeId, ...]] = []
    for level in range(inner):
        sibling = (index >> level) ^ 1
        plan.append(_element(sibling << level, min((sibling + 1) << level, size)))
    for level in range(inner, size.bit_length()):
        if (index >> level) & 1:
            plan.append((NodeId(level, (index >> level) - 1),))
    return tuple(plan)


def consistency_plan(old_size: int, new_size: int) -> Plan:
    """PROOF(old_size, D[new_size]) of RFC 9162 §2.1.4.1; () when there is nothing to prove."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from size {old_size} to size {new_size}")
    if old_size in (0, new_size):
        return ()
    # SUBPROOF(m, D[lo:hi], b) unrolled: each step emits the subtree it does not descend
    # into; the recursion emits them innermost first, hence the reversal.
    outer: list[tuple[int, int]] = []
    lo, hi, whole_old_tree = 0, new_size, True
    while old_size - lo != hi - lo:
        k = 1 << ((hi - lo - 1).bit_length() - 1)
        if old_size - lo <= k:
            outer.append((lo + k, hi))
            hi = lo + k
        else:
            outer.append((lo, lo + k))
            lo += k
            whole_old_tree = False
    if not whole_old_tree:
        outer.append((lo, hi))
    return tuple(_element(b, e) for b, e in reversed(outer))


def needed(plan: Plan) -> frozenset[NodeId]:
    return frozenset(n for element in plan for n in element)


def materialize(plan: Plan, hashes: Mapping[NodeId, bytes]) -> list[bytes]:
    out: list[bytes] = []
    for element in plan:
        try:
            out.append(fold([hashes[n] for n in element]))
        except KeyError as missing:
            raise ValueError(f"node {missing.args[0]} is missing from the store") from None
    return out


class Frontier:
    """The compact range [0, size): all an appender needs to extend the tree."""

    __slots__ = ("_nodes", "_size")

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if size < 0:
            raise ValueError(f"negative tree size {size}")
        ids = root_nodes(size)
        if len(hashes) != len(ids):
            raise ValueError(f"a tree of size {size} has {len(ids)} root nodes, got {len(hashes)}")
        for node, h in zip(ids, hashes, strict=True):
            _check_hash_value(h, f"hash of {node}")
        self._size = size
        self._nodes: list[tuple[NodeId, bytes]] = list(zip(ids, hashes, strict=True))

    @property
    def size(self) -> int:
        return self._size

    def append(self, leaf: bytes) -> list[tuple[NodeId, bytes]]:
        """Add one leaf hash; return the new leaf node and each node it completed, bottom-up."""
        _check_hash_value(leaf, "leaf hash")
        node, h = NodeId(0, self._size), leaf
        made = [(node, h)]
        nodes = self._nodes
        # Equal-level neighbours on the right edge are siblings: merge until levels differ.
        while nodes and nodes[-1][0].level == node.level:
            left = nodes.pop()
            node, h = NodeId(node.level + 1, node.index >> 1), node_hash(left[1], h)
            made.append((node, h))
        nodes.append((node, h))
        self._size += 1
        return made

    def root(self) -> bytes:
        if not self._nodes:
            return EMPTY_ROOT
        return fold([h for _, h in self._nodes])

    def nodes(self) -> tuple[tuple[NodeId, bytes], ...]:
        return tuple(self._nodes)


class MemoryTree:
    """Every perfect node in a dict, proofs through the same plans a database store uses."""

    __slots__ = ("_frontier", "_nodes")

    def __init__(self) -> None:
        self._frontier = Frontier()
        self._nodes: dict[NodeId, bytes] = {}

    @property
    def size(self) -> int:
        return self._frontier.size

    def append_entry(self, entry: bytes) -> int:
        return self.append_leaf_hash(leaf_hash(entry))

    def append_leaf_hash(self, leaf: bytes) -> int:
        index = self._frontier.size
        self._nodes.update(self._frontier.append(leaf))
        return index

    def node(self, node: NodeId) -> bytes:
        try:
            return self._nodes[node]
        except KeyError:
            raise ValueError(
                f"{node} is not a perfect node of a tree of size {self.size}"
            ) from None

    def _size_at(self, size: int | None) -> int:
        if size is None:
            return self.size
        if not 0 <= size <= self.size:
            raise ValueError(f"size {size} is outside the tree's history (0..{self.size})")
        return size

    def root(self, size: int | None = None) -> bytes:
        size = self._size_at(size)
        if size == 0:
            return EMPTY_ROOT
        return fold([self._nodes[n] for n in root_nodes(size)])

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        return materialize(inclusion_plan(index, self._size_at(size)), self._nodes)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        return materialize(consistency_plan(old_size, self._size_at(new_size)), self._nodes)


class ProofFailure(StrEnum):
    INDEX_OUT_OF_RANGE = "index_out_of_range"
    WRONG_PROOF_SIZE = "wrong_proof_size"
    ROOT_MISMATCH = "root_mismatch"
    SIZE_SHRANK = "size_shrank"
    INCONSISTENT = "inconsistent"
    MALFORMED_HASH = "malformed_hash"


class ProofError(FFAuditError):
    """A proof that does not verify; `expected` is the hash the caller trusts, `computed`
    what the proof led to, where the failure is a comparison of the two."""

    exit_code = 1
    http_status = 422

    def __init__(
        self,
        kind: ProofFailure,
        detail: str,
        *,
        expected: bytes | None = None,
        computed: bytes | None = None,
    ) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail
        self.expected = expected
        self.computed = computed

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only evidence would be lost by Exception's default (args-only) pickling,
        # and verifiers fan proofs out to worker processes.
        return (_rebuild_proof_error, (self.kind, self.detail, self.expected, self.computed))


def _rebuild_proof_error(
    kind: ProofFailure, detail: str, expected: bytes | None, computed: bytes | None
) -> ProofError:
    return ProofError(kind, detail, expected=expected, computed=computed)


def _check_hash_value(h: bytes, what: str) -> None:
    if len(h) != HASH_SIZE:
        raise ValueError(f"{what} is {len(h)} bytes, not {HASH_SIZE}")


def _check_hash(h: bytes, what: str) -> None:
    if len(h) != HASH_SIZE:
        raise ProofError(ProofFailure.MALFORMED_HASH, f"{what} is {len(h)} bytes, not {HASH_SIZE}")


def _check_empty_root(root: bytes, name: str) -> None:
    if root != EMPTY_ROOT:
        raise ProofError(
            ProofFailure.ROOT_MISMATCH,
            f"{name} root is not the empty tree's",
            expected=root,
            computed=EMPTY_ROOT,
        )


def _check_proof(proof: Sequence[bytes], want: int) -> None:
    if len(proof) != want:
        raise ProofError(
            ProofFailure.WRONG_PROOF_SIZE, f"proof has {len(proof)} hashes, expected {want}"
        )
    for i, h in enumerate(proof):
        if len(h) != HASH_SIZE:
            _check_hash(h, f"proof hash {i}")


def root_from_inclusion(leaf: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root that `proof` reaches from `leaf` at `index` (RFC 9162 §2.1.3.2)."""
    if not 0 <= index < size:
        raise ProofError(
            ProofFailure.INDEX_OUT_OF_RANGE, f"leaf index {index} is not in a tree of size {size}"
        )
    _check_hash(leaf, "leaf hash")
    inner = (index ^ (size - 1)).bit_length()
    _check_proof(proof, inner + (index >> inner).bit_count())
    r = leaf
    new = _new_node
    for i in range(inner):
        h = new()
        h.update(proof[i] + r if (index >> i) & 1 else r + proof[i])
        r = h.finalize()
    for i in range(inner, len(proof)):
        h = new()
        h.update(proof[i] + r)
        r = h.finalize()
    return r


def verify_inclusion(
    leaf: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes
) -> None:
    computed = root_from_inclusion(leaf, index, size, proof)
    _check_hash(root, "root")
    if computed != root:
        raise ProofError(
            ProofFailure.ROOT_MISMATCH,
            f"inclusion proof for leaf {index} leads to another root of size {size}",
            expected=root,
            computed=computed,
        )


def verify_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    """Check that the tree of `new_size` leaves extends the one of `old_size` (§2.1.4.2)."""
    if old_size < 0:
        raise ProofError(ProofFailure.INDEX_OUT_OF_RANGE, f"negative tree size {old_size}")
    if old_size > new_size:
        raise ProofError(
            ProofFailure.SIZE_SHRANK, f"tree size went down from {old_size} to {new_size}"
        )
    if old_size == 0 or old_size == new_size:
        _check_proof(proof, 0)
        if old_size == 0:
            # Every tree extends the empty one, whose root is fixed.
            _check_empty_root(old_root, "old")
            if new_size == 0:
                _check_empty_root(new_root, "new")
            _check_hash(new_root, "new root")
        elif old_root != new_root:
            # Two heads of one size: a fork. Equal roots are not length-checked: the upstream
            # vectors accept any equal pair here, and a checkpoint parser has checked them.
            raise ProofError(
                ProofFailure.INCONSISTENT,
                f"two different roots for tree size {old_size}",
                expected=old_root,
                computed=new_root,
            )
        return
    _check_hash(old_root, "old root")
    _check_hash(new_root, "new root")
    # Drop the levels where the old tree's last leaf is a right-edge node of a perfect
    # subtree; the walk then starts at that subtree, which is old_root itself when the old
    # size is a power of two and the proof's first hash otherwise.
    shift = (old_size & -old_size).bit_length() - 1
    fn, sn = (old_size - 1) >> shift, (new_size - 1) >> shift
    inner = (fn ^ sn).bit_length()
    seeded = fn == 0
    _check_proof(proof, (0 if seeded else 1) + inner + (fn >> inner).bit_count())
    fr = sr = old_root if seeded else proof[0]
    rest = proof if seeded else proof[1:]
    for i in range(inner):
        c = rest[i]
        if (fn >> i) & 1:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
        else:
            sr = node_hash(sr, c)
    for c in rest[inner:]:
        fr, sr = node_hash(c, fr), node_hash(c, sr)
    for name, want, got in (("old", old_root, fr), ("new", new_root, sr)):
        if got != want:
            raise ProofError(
                ProofFailure.INCONSISTENT,
                f"consistency proof {old_size} -> {new_size} does not reach the {name} root",
                expected=want,
                computed=got,
            )


# -- C2SP tlog-tiles ----------------------------------------------------------------------

TILE_HEIGHT: Final = 8
TILE_WIDTH: Final = 256
_MAX_TILE_LEVEL: Final = 63
_TILE_PATH: Final = re.compile(
    r"tile/(entries|0|[1-9][0-9]*)/((?:x[0-9]{3}/)*[0-9]{3})(?:\.p/([1-9][0-9]*))?", re.ASCII
)


def tile_index_path(n: int) -> str:
    if n < 0:
        raise ValueError(f"negative tile index {n}")
    groups = [f"{n % 1000:03d}"]
    n //= 1000
    while n:
        groups.append(f"x{n % 1000:03d}")
        n //= 1000
    return "/".join(reversed(groups))


def _width_suffix(width: int | None) -> str:
    if width is None or width == TILE_WIDTH:
        return ""
    if not 0 < width < TILE_WIDTH:
        raise ValueError(f"tile width {width} is not 1..{TILE_WIDTH}")
    return f".p/{width}"


def tile_path(level: int, index: int, width: int | None = None) -> str:
    """`width` None or 256 names the full tile."""
    if not 0 <= level <= _MAX_TILE_LEVEL:
        raise ValueError(f"tile level {level} is not 0..{_MAX_TILE_LEVEL}")
    return f"tile/{level}/{tile_index_path(index)}{_width_suffix(width)}"


def entries_path(index: int, width: int | None = None) -> str:
    return f"tile/entries/{tile_index_path(index)}{_width_suffix(width)}"


def parse_tile_path(path: str) -> tuple[int | None, int, int | None]:
    """(level, or None for an entry bundle; index; width, or None for a full tile)."""
    match = _TILE_PATH.fullmatch(path)
    if match is None:
        raise ValueError(f"not a tlog-tiles path: {path!r}")
    kind, digits, w = match.groups()
    level = None if kind == "entries" else int(kind)
    index = int(digits.replace("x", "").replace("/", ""))
    width = None if w is None else int(w)
    # Rebuilding the path rejects what the pattern lets through: a level above 63, a width of
    # 256 or more, and an index with superfluous leading groups ("x000/001").
    try:
        canonical = entries_path(index, width) if level is None else tile_path(level, index, width)
    except ValueError as bad:
        raise ValueError(f"not a tlog-tiles path: {path!r} ({bad})") from None
    if canonical != path:
        raise ValueError(f"not a canonical tlog-tiles path: {path!r}")
    return level, index, width


def tile_nodes(level: int, index: int, width: int) -> tuple[NodeId, ...]:
    if not 0 <= width <= TILE_WIDTH or level < 0 or index < 0:
        raise ValueError(f"no tile {level}/{index} of width {width}")
    first = index * TILE_WIDTH
    return tuple(NodeId(level * TILE_HEIGHT, first + i) for i in range(width))


def tile_width(level: int, index: int, size: int) -> int:
    if level < 0 or index < 0 or size < 0:
        raise ValueError(f"no tile {level}/{index} in a tree of size {size}")
    complete = size >> (level * TILE_HEIGHT)
    return max(0, min(TILE_WIDTH, complete - index * TILE_WIDTH))


def entry_bundle(entries: Sequence[bytes]) -> bytes:
    if len(entries) > TILE_WIDTH:
        raise ValueError(f"a bundle holds at most {TILE_WIDTH} entries, got {len(entries)}")
    parts: list[bytes] = []
    for i, entry in enumerate(entries):
        if len(entry) > 0xFFFF:
            raise ValueError(f"entry {i} is {len(entry)} bytes; a bundle holds at most 65535")
        parts += (len(entry).to_bytes(2, "big"), entry)
    return b"".join(parts)


def parse_entry_bundle(data: bytes) -> list[bytes]:
    entries: list[bytes] = []
    at = 0
    while at < len(data):
        if at + 2 > len(data):
            raise ValueError(f"entry bundle truncated in the length of entry {len(entries)}")
        end = at + 2 + int.from_bytes(data[at : at + 2], "big")
        if end > len(data):
            raise ValueError(f"entry bundle truncated in entry {len(entries)}")
        entries.append(bytes(data[at + 2 : end]))
        at = end
    if len(entries) > TILE_WIDTH:
        raise ValueError(f"a bundle holds at most {TILE_WIDTH} entries, got {len(entries)}")
    return entries
