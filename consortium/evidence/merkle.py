"""The audit log's Merkle tree, as in Certificate Transparency (RFC 6962 §2.1; RFC 9162 §2.1).

Leaf i (0-based; the event with seq i+1) hashes to SHA-256(0x00 || leaf_data) and a node to
SHA-256(0x01 || left || right); a tree of n leaves splits at the largest power of two below n.

- A signed root proves the exact sequence of leaves it covers: change, drop, add or reorder one and
  the root changes.
- `CompactRange` folds leaves into a root in O(log n) memory, and starts from the *compact range*
  (the O(log n) subtree hashes) of a prefix: an export carries those for the events before it,
  a checkpoint extends the previous checkpoint's with only the new leaves.
- An inclusion proof shows one leaf is in a tree; a consistency proof shows a tree of m leaves is
  a prefix of a tree of n leaves (no earlier leaf was changed): what lets a site's earlier
  checkpoint catch a history rewritten later.

Proofs are built from a `SubtreeHash(start, end)` provider (the hash of leaves [start, end)), so
the server can back it with stored nodes (`subtree_hash_from_perfect`) and tests with `MerkleTree`.
"""

import hashlib
from collections.abc import Callable, Iterable, Sequence

SubtreeHash = Callable[[int, int], bytes]
PerfectNode = Callable[[int, int], bytes]  # (level, index) -> hash of leaves [index * 2**level, (index+1) * 2**level)

EMPTY_ROOT = hashlib.sha256(b"").digest()


def leaf_hash(data: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


def split_point(size: int) -> int:
    """The largest power of two strictly below `size` (size >= 2): where RFC 6962 splits a tree."""
    return 1 << ((size - 1).bit_length() - 1)


def decompose(start: int, end: int) -> list[tuple[int, int]]:
    """[start, end) as the fewest aligned perfect subtrees, left to right (its compact range)."""
    pieces = []
    while start < end:
        level = (end - start).bit_length() - 1
        if start:
            level = min(level, (start & -start).bit_length() - 1)
        pieces.append((start, start + (1 << level)))
        start += 1 << level
    return pieces


class CompactRange:
    """The compact range of leaves [0, size): one subtree hash per set bit of `size`, largest first.

    `append` adds a leaf hash, `append_subtree` an aligned perfect subtree; `root()` is the tree's
    root. Memory stays O(log n) however many leaves pass through.
    """

    def __init__(self, size: int = 0, hashes: Sequence[bytes] = ()) -> None:
        if size < 0 or len(hashes) != size.bit_count():
            raise ValueError(f"a compact range of {size} leaves has {max(size, 0).bit_count()} hashes, "
                             f"not {len(hashes)}")
        self.size = size
        self._levels = [level for level in range(size.bit_length() - 1, -1, -1) if size >> level & 1]
        self._hashes = list(hashes)

    @property
    def hashes(self) -> list[bytes]:
        return list(self._hashes)

    def append(self, leaf: bytes) -> None:
        # append_subtree(0, leaf), unrolled: the verifier calls this once per event.
        size, levels, hashes = self.size, self._levels, self._hashes
        self.size, level = size + 1, 0
        while size & 1:
            levels.pop()
            leaf = hashlib.sha256(b"\x01" + hashes.pop() + leaf).digest()
            size, level = size >> 1, level + 1
        levels.append(level)
        hashes.append(leaf)

    def append_subtree(self, level: int, subtree: bytes) -> None:
        if self.size & ((1 << level) - 1):
            raise ValueError(f"a subtree of {1 << level} leaves cannot start at leaf {self.size}")
        self.size += 1 << level
        while self._levels and self._levels[-1] == level:
            self._levels.pop()
            subtree = node_hash(self._hashes.pop(), subtree)
            level += 1
        self._levels.append(level)
        self._hashes.append(subtree)

    def root(self) -> bytes:
        if not self._hashes:
            return EMPTY_ROOT
        root = self._hashes[-1]
        for left in reversed(self._hashes[:-1]):
            root = node_hash(left, root)
        return root

    def to_dict(self) -> dict:
        return {"size": self.size, "hashes": [h.hex() for h in self._hashes]}

    @classmethod
    def from_dict(cls, data: dict) -> "CompactRange":
        return cls(int(data["size"]), [bytes.fromhex(h) for h in data["hashes"]])


def root_of(leaves: Iterable[bytes]) -> bytes:
    """The root over leaf hashes given in order, in O(log n) memory."""
    tree = CompactRange()
    for leaf in leaves:
        tree.append(leaf)
    return tree.root()


def compact_range(start: int, end: int, subtree_hash: SubtreeHash) -> list[bytes]:
    """The subtree hashes of [start, end)'s decomposition (for [0, a): an export's prefix)."""
    return [subtree_hash(s, e) for s, e in decompose(start, end)]


def inclusion_proof(index: int, size: int, subtree_hash: SubtreeHash) -> list[bytes]:
    """The audit path of leaf `index` in a tree of `size` leaves (RFC 9162 §2.1.3.1), leaf side first."""
    if not 0 <= index < size:
        raise ValueError(f"leaf {index} is not in a tree of {size} leaves")
    proof, start, end = [], 0, size
    while end - start > 1:
        k = split_point(end - start)
        if index < start + k:
            proof.append(subtree_hash(start + k, end))
            end = start + k
        else:
            proof.append(subtree_hash(start, start + k))
            start += k
    return proof[::-1]


def verify_inclusion(index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes) -> bool:
    """Whether `proof` shows `leaf` at `index` in the tree of `size` leaves with `root` (RFC 9162 §2.1.3.2)."""
    if not 0 <= index < size:
        return False
    fn, sn, r = index, size - 1, leaf
    for p in proof:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    return sn == 0 and r == root


def consistency_proof(old_size: int, new_size: int, subtree_hash: SubtreeHash) -> list[bytes]:
    """The proof that the first `old_size` leaves are a prefix of the `new_size` tree (RFC 9162 §2.1.4.1)."""
    if not 0 <= old_size <= new_size:
        raise ValueError(f"no consistency proof from {old_size} to {new_size} leaves")
    if old_size in (0, new_size):
        return []
    proof, start, end, whole = [], 0, new_size, True
    while old_size - start != end - start:
        k = split_point(end - start)
        if old_size - start <= k:
            proof.append(subtree_hash(start + k, end))
            end = start + k
        else:
            proof.append(subtree_hash(start, start + k))
            start, whole = start + k, False
    if not whole:
        proof.append(subtree_hash(start, end))
    return proof[::-1]


def verify_consistency(old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]) -> bool:
    """Whether `proof` shows the tree (old_size, old_root) is a prefix of (new_size, new_root) (RFC 9162 §2.1.4.2)."""
    if not 0 <= old_size <= new_size:
        return False
    if old_size == new_size:
        return not proof and old_root == new_root
    if old_size == 0:
        return not proof
    path = list(proof)
    if not path:
        return False
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            return False
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    return fr == old_root and sr == new_root and sn == 0


def subtree_hash_from_perfect(perfect: PerfectNode) -> SubtreeHash:
    """A `SubtreeHash` over stored perfect subtrees: any range the proofs ask for is O(log n) of them."""

    def subtree_hash(start: int, end: int) -> bytes:
        size = end - start
        if size <= 0:
            raise ValueError(f"empty range [{start}, {end})")
        level = size.bit_length() - 1
        if size == 1 << level and start % size == 0:
            return perfect(level, start >> level)
        k = split_point(size)
        return node_hash(subtree_hash(start, start + k), subtree_hash(start + k, end))

    return subtree_hash


class MerkleTree:
    """Every perfect subtree of a list of leaf hashes, in memory: proofs for tests, benches and small logs."""

    def __init__(self, leaves: Iterable[bytes] = ()) -> None:
        self._levels: list[list[bytes]] = [[]]
        for leaf in leaves:
            self.append(leaf)

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def append(self, leaf: bytes) -> None:
        self._levels[0].append(leaf)
        level = 0
        while len(self._levels[level]) % 2 == 0:
            row = self._levels[level]
            if level + 1 == len(self._levels):
                self._levels.append([])
            self._levels[level + 1].append(node_hash(row[-2], row[-1]))
            level += 1

    def perfect(self, level: int, index: int) -> bytes:
        return self._levels[level][index]

    def subtree_hash(self, start: int, end: int) -> bytes:
        return subtree_hash_from_perfect(self.perfect)(start, end)

    def root(self, size: int | None = None) -> bytes:
        size = self.size if size is None else size
        return EMPTY_ROOT if size == 0 else self.subtree_hash(0, size)
