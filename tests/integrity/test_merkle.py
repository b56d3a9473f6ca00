"""audit.integrity.merkle against RFC 9162 §2.1 as written (a naive recursive MTH, PATH and
SUBPROOF below, hashing with `cryptography` directly), transparency-dev/merkle's vectors
(vectors/merkle/), and the C2SP tlog-tiles examples."""

from __future__ import annotations

import base64
import itertools
import json
import pickle
from collections.abc import Callable, Sequence
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.integrity.errors import FFAuditError
from audit.integrity.merkle import (
    EMPTY_ROOT,
    HASH_SIZE,
    TILE_HEIGHT,
    TILE_WIDTH,
    Frontier,
    MemoryTree,
    NodeId,
    Plan,
    ProofError,
    ProofFailure,
    consistency_plan,
    decompose,
    entries_path,
    entry_bundle,
    fold,
    inclusion_plan,
    leaf_hash,
    materialize,
    needed,
    node_hash,
    parse_entry_bundle,
    parse_tile_path,
    root_from_inclusion,
    root_nodes,
    tile_index_path,
    tile_nodes,
    tile_path,
    tile_width,
    verify_consistency,
    verify_inclusion,
)

VECTORS = Path(__file__).parent / "vectors" / "merkle"

# -- RFC 9162 §2.1, transcribed -------------------------------------------------------------


def _sha256(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    return h.finalize()


def _split(n: int) -> int:
    """The largest power of two smaller than n (n > 1)."""
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def _path_ranges(m: int, lo: int, hi: int) -> list[tuple[int, int]]:
    """PATH(m, D[lo:hi]) as the leaf ranges whose MTH the proof lists."""
    if hi - lo == 1:
        return []
    k = _split(hi - lo)
    if m < k:
        return [*_path_ranges(m, lo, lo + k), (lo + k, hi)]
    return [*_path_ranges(m - k, lo + k, hi), (lo, lo + k)]


def _subproof_ranges(m: int, lo: int, hi: int, whole: bool) -> list[tuple[int, int]]:
    """SUBPROOF(m, D[lo:hi], b) as leaf ranges."""
    if m == hi - lo:
        return [] if whole else [(lo, hi)]
    k = _split(hi - lo)
    if m <= k:
        return [*_subproof_ranges(m, lo, lo + k, whole), (lo + k, hi)]
    return [*_subproof_ranges(m - k, lo + k, hi, False), (lo, lo + k)]


def _proof_ranges(m: int, n: int) -> list[tuple[int, int]]:
    return _subproof_ranges(m, 0, n, True) if 0 < m < n else []


MAX = 300
ENTRIES = [f"entry {i}".encode() for i in range(MAX)]  # distinct: no proof verifies by luck


@cache
def mth(lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) of ENTRIES."""
    if hi == lo:
        return _sha256(b"")
    if hi - lo == 1:
        return _sha256(b"\x00" + ENTRIES[lo])
    k = _split(hi - lo)
    return _sha256(b"\x01" + mth(lo, lo + k) + mth(lo + k, hi))


def _build() -> MemoryTree:
    tree = MemoryTree()
    for i, entry in enumerate(ENTRIES):
        assert tree.append_entry(entry) == i
    return tree


TREE = _build()


def flip(data: bytes, at: int, bit: int = 0) -> bytes:
    out = bytearray(data)
    out[at % len(out)] ^= 1 << bit
    return bytes(out)


def failure(call: Callable[[], object]) -> ProofFailure | None:
    try:
        call()
    except ProofError as e:
        return e.kind
    return None


# -- hashing and geometry ---------------------------------------------------------------------


def test_hashes_are_rfc6962_sha256() -> None:
    assert HASH_SIZE == 32
    assert EMPTY_ROOT.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert leaf_hash(b"").hex() == (
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"
    )
    left, right = _sha256(b"l"), _sha256(b"r")
    assert leaf_hash(b"abc") == _sha256(b"\x00abc")
    assert node_hash(left, right) == _sha256(b"\x01" + left + right)
    assert node_hash(left, right) != node_hash(right, left)


def test_node_id_covers_its_leaves_and_orders_by_level() -> None:
    node = NodeId(3, 5)
    assert (node.begin, node.end) == (40, 48)
    assert sorted([NodeId(1, 0), NodeId(0, 7), NodeId(0, 2)]) == [
        NodeId(0, 2),
        NodeId(0, 7),
        NodeId(1, 0),
    ]


def test_decompose_examples() -> None:
    assert decompose(0, 0) == ()
    assert decompose(5, 5) == ()
    assert root_nodes(13) == (NodeId(3, 0), NodeId(2, 2), NodeId(0, 12))
    assert decompose(3, 13) == (NodeId(0, 3), NodeId(2, 1), NodeId(2, 2), NodeId(0, 12))
    for begin, end in ((-1, 3), (4, 3)):
        with pytest.raises(ValueError, match="range"):
            decompose(begin, end)


@given(st.integers(0, 2**70), st.integers(0, 2**70))
def test_decompose_is_the_compact_range(begin: int, length: int) -> None:
    end = begin + length
    nodes = decompose(begin, end)
    assert len(nodes) <= 2 * end.bit_length()
    at = begin
    for node in nodes:
        assert node.begin == at
        at = node.end
    assert at == end
    # Maximal: no two neighbours are siblings (they would be one node), and the levels rise
    # strictly, then fall strictly, the top level at most twice.
    for a, b in itertools.pairwise(nodes):
        assert not (a.level == b.level and a.index % 2 == 0)
    levels = [n.level for n in nodes]
    if levels:
        first = levels.index(max(levels))
        last = len(levels) - 1 - levels[::-1].index(max(levels))
        assert last - first <= 1
        assert levels[: first + 1] == sorted(set(levels[: first + 1]))
        assert levels[last:] == sorted(set(levels[last:]), reverse=True)


def test_fold_is_mth_of_the_range() -> None:
    with pytest.raises(ValueError, match="empty"):
        fold([])
    for lo, hi in ((0, 13), (8, 13), (12, 13), (64, 100), (0, MAX)):
        assert fold([TREE.node(n) for n in decompose(lo, hi)]) == mth(lo, hi)


# -- plans -------------------------------------------------------------------------------------


def _ranges(plan: Plan) -> list[tuple[int, int]]:
    for element in plan:
        assert element
        assert element == decompose(element[0].begin, element[-1].end)
    return [(e[0].begin, e[-1].end) for e in plan]


def test_plans_are_rfc_paths_exhaustively() -> None:
    for size in range(1, 70):
        for index in range(size):
            assert _ranges(inclusion_plan(index, size)) == _path_ranges(index, 0, size)
        for old in range(size + 1):
            assert _ranges(consistency_plan(old, size)) == _proof_ranges(old, size)


@given(st.integers(1, 2**64), st.data())
def test_plans_are_rfc_paths_at_any_size(size: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, size - 1))
    old = data.draw(st.integers(0, size))
    inclusion, consistency = inclusion_plan(index, size), consistency_plan(old, size)
    assert _ranges(inclusion) == _path_ranges(index, 0, size)
    assert _ranges(consistency) == _proof_ranges(old, size)
    # O(log n): one hash per level, the one ragged element a compact range.
    bits = size.bit_length()
    assert len(inclusion) <= bits
    assert len(needed(inclusion)) <= 2 * bits
    assert len(consistency) <= 2 * bits
    assert len(needed(consistency)) <= 3 * bits


def test_plans_reject_impossible_requests() -> None:
    for index, size in ((0, 0), (5, 5), (-1, 4)):
        with pytest.raises(ValueError, match="not in a tree"):
            inclusion_plan(index, size)
    for old, new in ((5, 4), (-1, 3)):
        with pytest.raises(ValueError, match="no consistency proof"):
            consistency_plan(old, new)
    assert consistency_plan(0, 9) == consistency_plan(9, 9) == ()


def test_ragged_element_lists_several_nodes() -> None:
    plan = inclusion_plan(0, 7)
    assert plan == ((NodeId(0, 1),), (NodeId(1, 1),), (NodeId(1, 2), NodeId(0, 6)))
    assert needed(plan) == {NodeId(0, 1), NodeId(1, 1), NodeId(1, 2), NodeId(0, 6)}


def test_materialize_names_the_missing_node() -> None:
    plan = inclusion_plan(0, 7)
    held = {n: TREE.node(n) for n in needed(plan) if n != NodeId(0, 6)}
    with pytest.raises(ValueError, match=r"NodeId\(level=0, index=6\)"):
        materialize(plan, held)
    held[NodeId(0, 6)] = TREE.node(NodeId(0, 6))
    assert materialize(plan, held) == [mth(*r) for r in _path_ranges(0, 0, 7)]


# -- Frontier and MemoryTree -----------------------------------------------------------------


def test_frontier_append_reports_completed_nodes_bottom_up() -> None:
    frontier = Frontier()
    assert frontier.size == 0
    assert frontier.root() == EMPTY_ROOT
    leaves = [leaf_hash(e) for e in ENTRIES[:4]]
    assert frontier.append(leaves[0]) == [(NodeId(0, 0), leaves[0])]
    assert frontier.append(leaves[1]) == [
        (NodeId(0, 1), leaves[1]),
        (NodeId(1, 0), mth(0, 2)),
    ]
    assert frontier.append(leaves[2]) == [(NodeId(0, 2), leaves[2])]
    assert [n for n, _ in frontier.append(leaves[3])] == [NodeId(0, 3), NodeId(1, 1), NodeId(2, 0)]
    assert frontier.nodes() == ((NodeId(2, 0), mth(0, 4)),)
    assert frontier.root() == mth(0, 4)


def test_frontier_resumes_from_its_nodes() -> None:
    frontier = Frontier()
    for entry in ENTRIES[:37]:
        frontier.append(leaf_hash(entry))
    resumed = Frontier(37, [h for _, h in frontier.nodes()])
    assert [n for n, _ in resumed.nodes()] == list(root_nodes(37))
    for entry in ENTRIES[37:100]:
        assert resumed.append(leaf_hash(entry)) == frontier.append(leaf_hash(entry))
    assert resumed.size == 100
    assert resumed.root() == frontier.root() == mth(0, 100)


def test_frontier_rejects_inconsistent_state() -> None:
    with pytest.raises(ValueError, match="root nodes"):
        Frontier(3, [mth(0, 2)])
    with pytest.raises(ValueError, match="bytes"):
        Frontier(1, [b"short"])
    with pytest.raises(ValueError, match="negative"):
        Frontier(-1)
    with pytest.raises(ValueError, match="bytes"):
        Frontier().append(b"an entry, not a hash")


def test_memory_tree_roots_and_nodes_at_every_size() -> None:
    assert MemoryTree().root() == EMPTY_ROOT
    assert TREE.size == MAX
    for size in range(MAX + 1):
        assert TREE.root(size) == mth(0, size)
    assert TREE.node(NodeId(8, 0)) == mth(0, 256)
    for bad in (NodeId(9, 0), NodeId(0, MAX)):
        with pytest.raises(ValueError, match="not a perfect node"):
            TREE.node(bad)
    for size in (-1, MAX + 1):
        with pytest.raises(ValueError, match="outside the tree's history"):
            TREE.root(size)


def test_memory_tree_append_leaf_hash_matches_append_entry() -> None:
    a, b = MemoryTree(), MemoryTree()
    for entry in ENTRIES[:20]:
        a.append_entry(entry)
        b.append_leaf_hash(leaf_hash(entry))
    assert a.root() == b.root() == mth(0, 20)
    assert a.inclusion_proof(19) == b.inclusion_proof(19)


# -- verification: properties ------------------------------------------------------------------


def _inclusion_shape(index: int, size: int) -> tuple[bool, ...]:
    """Which proof hashes go on the left: all that decides the root a proof computes."""
    return tuple(element[0].begin < index for element in inclusion_plan(index, size))


def _expected_inclusion(
    index: int, size: int, true_index: int, true_size: int, proof: list[bytes]
) -> ProofFailure | None:
    if not 0 <= index < size:
        return ProofFailure.INDEX_OUT_OF_RANGE
    if len(inclusion_plan(index, size)) != len(proof):
        return ProofFailure.WRONG_PROOF_SIZE
    # RFC 6962 hashes do not commit to the size: a size whose proof has the same shape
    # verifies too (the signed checkpoint binds the size).
    if _inclusion_shape(index, size) == _inclusion_shape(true_index, true_size):
        return None
    return ProofFailure.ROOT_MISMATCH


def _consistency_shape(old: int, new: int) -> tuple[object, ...]:
    plan = consistency_plan(old, new)
    return (old & (old - 1) == 0, tuple(element[-1].end <= old for element in plan))


def _expected_consistency(
    old: int, new: int, true_old: int, true_new: int, proof: list[bytes]
) -> ProofFailure | None:
    old_root, new_root = mth(0, true_old), mth(0, true_new)
    if old > new:
        return ProofFailure.SIZE_SHRANK
    if old in (0, new):
        if proof:
            return ProofFailure.WRONG_PROOF_SIZE
        if old == 0:
            empty = old_root == EMPTY_ROOT and (new > 0 or new_root == EMPTY_ROOT)
            return None if empty else ProofFailure.ROOT_MISMATCH
        return None if old_root == new_root else ProofFailure.INCONSISTENT
    if len(consistency_plan(old, new)) != len(proof):
        return ProofFailure.WRONG_PROOF_SIZE
    if _consistency_shape(old, new) == _consistency_shape(true_old, true_new):
        return None
    return ProofFailure.INCONSISTENT


@settings(max_examples=300, deadline=None)
@given(st.integers(1, MAX), st.data())
def test_inclusion_proofs_verify_and_tampering_fails(size: int, data: st.DataObject) -> None:
    index = data.draw(st.integers(0, size - 1), label="index")
    leaf, root = leaf_hash(ENTRIES[index]), mth(0, size)
    assert TREE.root(size) == root

    proof = TREE.inclusion_proof(index, size)
    assert proof == [mth(*r) for r in _path_ranges(index, 0, size)]
    assert root_from_inclusion(leaf, index, size, proof) == root
    verify_inclusion(leaf, index, size, proof, root)

    at = data.draw(st.integers(0, HASH_SIZE - 1), label="byte")
    bit = data.draw(st.integers(0, 7), label="bit")
    for i in range(len(proof)):
        bad = [*proof[:i], flip(proof[i], at, bit), *proof[i + 1 :]]
        with pytest.raises(ProofError) as caught:
            verify_inclusion(leaf, index, size, bad, root)
        assert caught.value.kind is ProofFailure.ROOT_MISMATCH
        assert caught.value.expected == root
        assert caught.value.computed == root_from_inclusion(leaf, index, size, bad) != root
    kind = failure(lambda: verify_inclusion(flip(leaf, at, bit), index, size, proof, root))
    assert kind is ProofFailure.ROOT_MISMATCH
    kind = failure(lambda: verify_inclusion(leaf, index, size, proof, flip(root, at, bit)))
    assert kind is ProofFailure.ROOT_MISMATCH

    other = data.draw(st.integers(-1, size + 2).filter(lambda i: i != index), label="index'")
    expected = _expected_inclusion(other, size, index, size, proof)
    assert expected is not None  # the leaves are distinct, the shapes differ
    assert failure(lambda: verify_inclusion(leaf, other, size, proof, root)) is expected

    resized = data.draw(st.integers(0, 2 * size + 2).filter(lambda s: s != size), label="size'")
    expected = _expected_inclusion(index, resized, index, size, proof)
    assert failure(lambda: verify_inclusion(leaf, index, resized, proof, root)) is expected


@settings(max_examples=300, deadline=None)
@given(st.integers(1, MAX), st.data())
def test_consistency_proofs_verify_and_tampering_fails(size: int, data: st.DataObject) -> None:
    old = data.draw(st.integers(0, size), label="old")
    old_root, new_root = TREE.root(old), TREE.root(size)
    assert (old_root, new_root) == (mth(0, old), mth(0, size))

    proof = TREE.consistency_proof(old, size)
    assert proof == [mth(*r) for r in _proof_ranges(old, size)]
    verify_consistency(old, size, proof, old_root, new_root)

    at = data.draw(st.integers(0, HASH_SIZE - 1), label="byte")
    bit = data.draw(st.integers(0, 7), label="bit")
    for i in range(len(proof)):
        bad = [*proof[:i], flip(proof[i], at, bit), *proof[i + 1 :]]
        with pytest.raises(ProofError) as caught:
            verify_consistency(old, size, bad, old_root, new_root)
        assert caught.value.kind is ProofFailure.INCONSISTENT
        assert caught.value.expected in (old_root, new_root)
        assert caught.value.computed != caught.value.expected
    flipped_old = ProofFailure.ROOT_MISMATCH if old == 0 else ProofFailure.INCONSISTENT
    kind = failure(lambda: verify_consistency(old, size, proof, flip(old_root, at), new_root))
    assert kind is flipped_old
    # Any 32 bytes extend the empty tree: the checkpoint signature vouches for the root.
    kind = failure(lambda: verify_consistency(old, size, proof, old_root, flip(new_root, at)))
    assert kind is (ProofFailure.INCONSISTENT if old else None)

    other = data.draw(st.integers(0, size + 2).filter(lambda m: m != old), label="old'")
    expected = _expected_consistency(other, size, old, size, proof)
    assert failure(lambda: verify_consistency(other, size, proof, old_root, new_root)) is expected

    resized = data.draw(st.integers(0, 2 * size + 2).filter(lambda n: n != size), label="new'")
    expected = _expected_consistency(old, resized, old, size, proof)
    assert failure(lambda: verify_consistency(old, resized, proof, old_root, new_root)) is expected


def test_every_old_size_is_consistent_with_every_newer_size() -> None:
    for new in range(1, 80):
        for old in range(new + 1):
            verify_consistency(old, new, TREE.consistency_proof(old, new), mth(0, old), mth(0, new))


def test_proof_errors_carry_evidence() -> None:
    proof = TREE.inclusion_proof(3, 10)
    with pytest.raises(ProofError) as caught:
        verify_inclusion(leaf_hash(b"forged"), 3, 10, proof, mth(0, 10))
    error = caught.value
    assert isinstance(error, FFAuditError)
    assert (error.exit_code, error.http_status) == (1, 422)
    assert error.kind == "root_mismatch"
    assert error.message == error.detail == str(error)
    assert error.expected == mth(0, 10)
    assert error.computed == root_from_inclusion(leaf_hash(b"forged"), 3, 10, proof)
    clone = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own object, round-tripped
    assert (clone.kind, clone.detail, clone.expected, clone.computed) == (
        error.kind,
        error.detail,
        error.expected,
        error.computed,
    )


def test_malformed_hashes_are_named() -> None:
    leaf, proof, root = leaf_hash(ENTRIES[3]), TREE.inclusion_proof(3, 10), mth(0, 10)
    cases: list[Callable[[], None]] = [
        lambda: verify_inclusion(leaf[:31], 3, 10, proof, root),
        lambda: verify_inclusion(leaf, 3, 10, [*proof[:-1], proof[-1] + b"\0"], root),
        lambda: verify_inclusion(leaf, 3, 10, proof, root[:16]),
        lambda: verify_consistency(3, 10, TREE.consistency_proof(3, 10), b"", root),
        lambda: verify_consistency(0, 10, [], EMPTY_ROOT, root * 2),
    ]
    for case in cases:
        assert failure(case) is ProofFailure.MALFORMED_HASH
    assert failure(lambda: verify_consistency(-1, 3, [], EMPTY_ROOT, root)) is (
        ProofFailure.INDEX_OUT_OF_RANGE
    )


# -- transparency-dev/merkle vectors ---------------------------------------------------------


def _vector_files(kind: str) -> list[Path]:
    return sorted((VECTORS / kind).rglob("*.json"))


def _b64(value: str | None) -> bytes:
    return base64.b64decode(value or "")


def _b64s(values: Sequence[str] | None) -> list[bytes]:
    return [_b64(v) for v in values or ()]


def test_all_vectors_are_present() -> None:
    # 98 inclusion and 98 consistency files at the pinned commit (README.md).
    assert (len(_vector_files("inclusion")), len(_vector_files("consistency"))) == (98, 98)


def _expected_vector_inclusion(v: dict[str, Any]) -> ProofFailure | None:
    index, size, proof = v["leafIdx"], v["treeSize"], _b64s(v["proof"])
    if not 0 <= index < size:
        return ProofFailure.INDEX_OUT_OF_RANGE
    if len(_b64(v["leafHash"])) != HASH_SIZE:
        return ProofFailure.MALFORMED_HASH
    if len(proof) != len(inclusion_plan(index, size)):
        return ProofFailure.WRONG_PROOF_SIZE
    if any(len(h) != HASH_SIZE for h in proof) or len(_b64(v["root"])) != HASH_SIZE:
        return ProofFailure.MALFORMED_HASH
    return None if not v["wantErr"] else ProofFailure.ROOT_MISMATCH


@pytest.mark.parametrize(
    "path", _vector_files("inclusion"), ids=lambda p: str(p.relative_to(VECTORS))
)
def test_inclusion_vector(path: Path) -> None:
    v = json.loads(path.read_text())
    args = (_b64(v["leafHash"]), v["leafIdx"], v["treeSize"], _b64s(v["proof"]), _b64(v["root"]))
    kind = failure(lambda: verify_inclusion(*args))
    assert (kind is not None) == v["wantErr"], v["desc"]
    assert kind is _expected_vector_inclusion(v), v["desc"]


def _expected_vector_consistency(v: dict[str, Any]) -> ProofFailure | None:
    old, new, proof = v["size1"], v["size2"], _b64s(v["proof"])
    root1, root2 = _b64(v["root1"]), _b64(v["root2"])
    if old > new:
        return ProofFailure.SIZE_SHRANK
    if old in (0, new):
        if proof:
            return ProofFailure.WRONG_PROOF_SIZE
        if old == 0 and (root1 != EMPTY_ROOT or (new == 0 and root2 != EMPTY_ROOT)):
            return ProofFailure.ROOT_MISMATCH
        if old == 0:
            return None if len(root2) == HASH_SIZE else ProofFailure.MALFORMED_HASH
        return None if root1 == root2 else ProofFailure.INCONSISTENT
    if len(root1) != HASH_SIZE or len(root2) != HASH_SIZE:
        return ProofFailure.MALFORMED_HASH
    if len(proof) != len(consistency_plan(old, new)):
        return ProofFailure.WRONG_PROOF_SIZE
    if any(len(h) != HASH_SIZE for h in proof):
        return ProofFailure.MALFORMED_HASH
    return None if not v["wantErr"] else ProofFailure.INCONSISTENT


@pytest.mark.parametrize(
    "path", _vector_files("consistency"), ids=lambda p: str(p.relative_to(VECTORS))
)
def test_consistency_vector(path: Path) -> None:
    v = json.loads(path.read_text())
    args = (v["size1"], v["size2"], _b64s(v["proof"]), _b64(v["root1"]), _b64(v["root2"]))
    kind = failure(lambda: verify_consistency(*args))
    assert (kind is not None) == v["wantErr"], v["desc"]
    assert kind is _expected_vector_consistency(v), v["desc"]


# -- C2SP tlog-tiles -------------------------------------------------------------------------


def test_tile_paths_follow_the_spec() -> None:
    assert (TILE_HEIGHT, TILE_WIDTH) == (8, 256)
    assert tile_index_path(1234067) == "x001/x234/067"
    assert tile_index_path(0) == "000"
    assert tile_index_path(1000) == "x001/000"
    assert tile_path(0, 1234067) == "tile/0/x001/x234/067"
    assert tile_path(2, 5, 17) == "tile/2/005.p/17"
    assert tile_path(2, 5, 256) == tile_path(2, 5) == "tile/2/005"
    assert entries_path(273, 112) == "tile/entries/273.p/112"
    assert entries_path(1000) == "tile/entries/x001/000"
    calls: list[Callable[[], object]] = [
        lambda: tile_index_path(-1),
        lambda: tile_path(64, 0),
        lambda: tile_path(-1, 0),
        lambda: tile_path(0, 0, 0),
        lambda: tile_path(0, 0, 257),
        lambda: entries_path(0, 0),
    ]
    for call in calls:
        with pytest.raises(ValueError, match="tile"):
            call()


@given(
    st.one_of(st.none(), st.integers(0, 63)),
    st.integers(0, 2**64),
    st.one_of(st.none(), st.integers(1, 255)),
)
def test_tile_paths_round_trip(level: int | None, index: int, width: int | None) -> None:
    path = entries_path(index, width) if level is None else tile_path(level, index, width)
    assert parse_tile_path(path) == (level, index, width)


@pytest.mark.parametrize(
    "path",
    [
        "",
        "tile/0",
        "tile/00/000",
        "tile/+1/000",
        "tile/64/000",
        "tile/-1/000",
        "tile/0/0",
        "tile/0/00",
        "tile/0/0000",
        "tile/0/x001",
        "tile/0/001/002",
        "tile/0/x000/001",
        "tile/0/X001/000",
        "tile/0/000/",
        "/tile/0/000",
        "tile/0/000\n",
        "tile/0/0\u0660\u0660",
        "tile/0/000.p/0",
        "tile/0/000.p/007",
        "tile/0/000.p/256",
        "tile/0/000.p/",
        "tile/0/000.p/1/2",
        "tile/0/000.q/1",
        "tile/data/000",
        "tile/entries/entries/000",
        "tile/entries/000.p/300",
    ],
)
def test_parse_tile_path_rejects_non_canonical(path: str) -> None:
    with pytest.raises(ValueError, match="tlog-tiles path"):
        parse_tile_path(path)


def test_tile_nodes_are_the_specs_merkle_tree_hashes() -> None:
    # MTH(D[(n*256 + i) * 256**l : (n*256 + i + 1) * 256**l]) for i < width.
    for level, n, width in ((0, 0, 256), (0, 7, 3), (1, 2, 256), (2, 1, 1)):
        nodes = tile_nodes(level, n, width)
        assert len(nodes) == width
        for i, node in enumerate(nodes):
            assert node.begin == (n * 256 + i) * 256**level
            assert node.end == (n * 256 + i + 1) * 256**level
    assert tile_nodes(1, 0, 1) == (NodeId(8, 0),)
    assert TREE.node(tile_nodes(1, 0, 1)[0]) == mth(0, 256)
    with pytest.raises(ValueError, match="no tile"):
        tile_nodes(0, 0, 257)


def test_tile_width_matches_the_specs_example() -> None:
    # "a tree of size 70,000 will be represented by 273 full level 0 tiles, one partial
    # level 0 tile of width 112, one full level 1 tile, one partial level 1 tile of width
    # 17, and one partial level 2 tile of width 1."
    size = 70_000
    assert [tile_width(0, n, size) for n in (0, 272, 273, 274)] == [256, 256, 112, 0]
    assert [tile_width(1, n, size) for n in (0, 1, 2)] == [256, 17, 0]
    assert [tile_width(2, n, size) for n in (0, 1)] == [1, 0]
    assert tile_width(3, 0, size) == 0
    # "a tree of size 256 will be represented by a full level 0 tile and a partial level 1
    # tile of width 1."
    assert (tile_width(0, 0, 256), tile_width(0, 1, 256), tile_width(1, 0, 256)) == (256, 0, 1)


@given(st.integers(0, 8), st.integers(0, 300), st.integers(0, 2**72))
def test_tile_width_counts_complete_nodes(level: int, index: int, size: int) -> None:
    nodes = tile_nodes(level, index, TILE_WIDTH)
    assert tile_width(level, index, size) == sum(node.end <= size for node in nodes)


def test_entry_bundles() -> None:
    entries = [b"", b"a", b"\x00" * 300, bytes(range(256)) * 255]
    data = entry_bundle(entries)
    assert data[:5] == b"\x00\x00\x00\x01a"
    assert parse_entry_bundle(data) == entries
    assert entry_bundle([]) == b""
    assert parse_entry_bundle(b"") == []
    assert parse_entry_bundle(entry_bundle([b"x"] * 256)) == [b"x"] * 256
    with pytest.raises(ValueError, match="65535"):
        entry_bundle([b"x" * 65536])
    with pytest.raises(ValueError, match="at most 256"):
        entry_bundle([b"x"] * 257)
    with pytest.raises(ValueError, match="at most 256"):
        parse_entry_bundle(b"\x00\x00" * 257)
    for bad in (b"\x00", b"\x00\x02a", data[:-1]):
        with pytest.raises(ValueError, match="truncated"):
            parse_entry_bundle(bad)


@given(st.lists(st.binary(max_size=70), max_size=40))
def test_entry_bundles_round_trip(entries: list[bytes]) -> None:
    assert parse_entry_bundle(entry_bundle(entries)) == entries
