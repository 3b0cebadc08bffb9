"""The Merkle tree (RFC 6962/9162): roots, compact ranges, inclusion and consistency proofs, checked
against hand-computed trees, Certificate Transparency's published test vectors and a naive recursive
implementation of the RFC's definitions."""

import hashlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consortium.evidence import merkle

# The leaf inputs and roots of the reference test vectors in Certificate Transparency's implementations.
CT_LEAVES = [bytes.fromhex(h) for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
                                        "606162636465666768696a6b6c6d6e6f"]]
CT_ROOTS = [
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]


def sha(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def naive_root(leaves: list[bytes]) -> bytes:
    """MTH(D[n]) exactly as RFC 6962 §2.1 defines it, over leaf hashes."""
    if not leaves:
        return sha(b"")
    if len(leaves) == 1:
        return leaves[0]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    return sha(b"\x01" + naive_root(leaves[:k]) + naive_root(leaves[k:]))


def naive_path(m: int, leaves: list[bytes]) -> list[bytes]:
    if len(leaves) == 1:
        return []
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if m < k:
        return naive_path(m, leaves[:k]) + [naive_root(leaves[k:])]
    return naive_path(m - k, leaves[k:]) + [naive_root(leaves[:k])]


def naive_subproof(m: int, leaves: list[bytes], whole: bool) -> list[bytes]:
    if m == len(leaves):
        return [] if whole else [naive_root(leaves)]
    k = 1
    while k * 2 < len(leaves):
        k *= 2
    if m <= k:
        return naive_subproof(m, leaves[:k], whole) + [naive_root(leaves[k:])]
    return naive_subproof(m - k, leaves[k:], False) + [naive_root(leaves[:k])]


def leaves_of(n: int, seed: int = 0) -> list[bytes]:
    rng = random.Random(seed)
    return [merkle.leaf_hash(rng.randbytes(rng.randrange(0, 40))) for _ in range(n)]


def test_it_hashes_a_small_tree_as_computed_by_hand():
    l0, l1, l2 = (sha(b"\x00" + data) for data in (b"a", b"b", b"c"))
    assert merkle.root_of([]) == sha(b"")
    assert merkle.root_of([l0]) == l0
    assert merkle.root_of([l0, l1]) == sha(b"\x01" + l0 + l1)
    # Three leaves split 2 + 1: the third is promoted, not paired with a copy of itself.
    assert merkle.root_of([l0, l1, l2]) == sha(b"\x01" + sha(b"\x01" + l0 + l1) + l2)


def test_it_matches_certificate_transparencys_test_vectors():
    leaves = [merkle.leaf_hash(data) for data in CT_LEAVES]
    for size in range(1, len(leaves) + 1):
        assert merkle.root_of(leaves[:size]).hex() == CT_ROOTS[size - 1]
        assert merkle.MerkleTree(leaves).root(size).hex() == CT_ROOTS[size - 1]


@pytest.mark.parametrize("size", [*range(0, 70), 127, 128, 129, 1000, 1025])
def test_it_computes_the_same_root_streaming_from_stored_nodes_and_naively(size):
    leaves = leaves_of(size, seed=size)
    expected = naive_root(leaves)
    assert merkle.root_of(leaves) == expected
    assert merkle.MerkleTree(leaves).root() == expected


def test_it_extends_a_prefixs_compact_range_with_the_new_leaves_only():
    leaves = leaves_of(300, seed=1)
    tree = merkle.MerkleTree(leaves)
    for size in [0, 1, 2, 3, 7, 8, 100, 255, 256, 299]:
        frontier = merkle.CompactRange(size, merkle.compact_range(0, size, tree.subtree_hash))
        assert len(frontier.hashes) == size.bit_count()
        assert frontier.root() == naive_root(leaves[:size])
        stored = merkle.CompactRange.from_dict(frontier.to_dict())  # as a checkpoint keeps it
        for leaf in leaves[size:]:
            stored.append(leaf)
        assert stored.root() == naive_root(leaves)


def test_it_folds_aligned_subtrees_after_leaves_as_an_export_suffix_does():
    leaves = leaves_of(203, seed=2)
    tree = merkle.MerkleTree(leaves)
    for start in [0, 1, 5, 64, 100, 202, 203]:
        folded = merkle.CompactRange()
        for leaf in leaves[:start]:
            folded.append(leaf)
        for begin, end in merkle.decompose(start, len(leaves)):
            folded.append_subtree((end - begin).bit_length() - 1, tree.subtree_hash(begin, end))
        assert folded.root() == naive_root(leaves)


def test_it_refuses_a_subtree_that_is_not_aligned_and_a_frontier_of_the_wrong_length():
    with pytest.raises(ValueError, match="cannot start at leaf 1"):
        merkle.CompactRange(1, [b"\x00" * 32]).append_subtree(1, b"\x00" * 32)
    with pytest.raises(ValueError, match="has 2 hashes"):
        merkle.CompactRange(3, [b"\x00" * 32])


def test_it_decomposes_a_range_into_the_fewest_aligned_subtrees():
    assert merkle.decompose(0, 0) == []
    assert merkle.decompose(0, 7) == [(0, 4), (4, 6), (6, 7)]
    assert merkle.decompose(3, 13) == [(3, 4), (4, 8), (8, 12), (12, 13)]
    for start in range(0, 40):
        for end in range(start, 40):
            pieces = merkle.decompose(start, end)
            assert [s for s, _ in pieces[1:]] == [e for _, e in pieces[:-1]]
            assert all((e - s) & (e - s - 1) == 0 and s % (e - s) == 0 for s, e in pieces)


@pytest.mark.parametrize("size", range(1, 41))
def test_it_proves_every_leafs_inclusion_and_rejects_a_wrong_leaf_index_or_root(size):
    leaves = leaves_of(size, seed=size)
    tree, root = merkle.MerkleTree(leaves), naive_root(leaves)
    for index in range(size):
        proof = merkle.inclusion_proof(index, size, tree.subtree_hash)
        assert proof == naive_path(index, leaves)
        assert merkle.verify_inclusion(index, size, leaves[index], proof, root)
        assert not merkle.verify_inclusion(index, size, merkle.leaf_hash(b"forged"), proof, root)
        assert not merkle.verify_inclusion(index, size, leaves[index], proof, merkle.leaf_hash(b"other root"))
        if size > 1:
            other = (index + 1) % size
            assert not merkle.verify_inclusion(other, size, leaves[index], proof, root)
            assert not merkle.verify_inclusion(index, size, leaves[index], proof[:-1], root)
            assert not merkle.verify_inclusion(index, size, leaves[index], [*proof, proof[0]], root)


@pytest.mark.parametrize("new_size", range(0, 41))
def test_it_proves_consistency_from_every_smaller_tree_and_rejects_a_changed_history(new_size):
    leaves = leaves_of(new_size, seed=100 + new_size)
    tree, new_root = merkle.MerkleTree(leaves), naive_root(leaves)
    for old_size in range(0, new_size + 1):
        proof = merkle.consistency_proof(old_size, new_size, tree.subtree_hash)
        if 0 < old_size < new_size:
            assert proof == naive_subproof(old_size, leaves, True)
        old_root = naive_root(leaves[:old_size])
        assert merkle.verify_consistency(old_size, new_size, old_root, new_root, proof)
        if old_size == 0:
            continue
        rewritten = [*leaves[: old_size - 1], merkle.leaf_hash(b"edited"), *leaves[old_size:]]
        assert not merkle.verify_consistency(old_size, new_size, old_root, naive_root(rewritten), proof)
        assert not merkle.verify_consistency(old_size, new_size, merkle.leaf_hash(b"x"), new_root, proof)
        if proof:
            assert not merkle.verify_consistency(old_size, new_size, old_root, new_root, proof[:-1])
            bent = [*proof[:-1], merkle.leaf_hash(b"bent")]
            assert not merkle.verify_consistency(old_size, new_size, old_root, new_root, bent)
        if old_size < new_size:
            assert not merkle.verify_consistency(old_size + 1, new_size, old_root, new_root, proof)


@given(st.integers(min_value=1, max_value=600), st.data())
def test_it_agrees_with_the_naive_definitions_on_random_trees(size, data):
    leaves = leaves_of(size, seed=size * 7)
    tree = merkle.MerkleTree(leaves)
    index = data.draw(st.integers(0, size - 1))
    old = data.draw(st.integers(1, size))
    assert tree.root() == naive_root(leaves)
    assert merkle.inclusion_proof(index, size, tree.subtree_hash) == naive_path(index, leaves)
    proof = merkle.consistency_proof(old, size, tree.subtree_hash)
    assert proof == (naive_subproof(old, leaves, True) if old < size else [])
    assert merkle.verify_consistency(old, size, naive_root(leaves[:old]), tree.root(), proof)
