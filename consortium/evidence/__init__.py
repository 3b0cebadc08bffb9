"""Evidence an auditor can verify, without Django: the audit log's canonical hash, its Merkle tree,
signed checkpoints, export bundles and their verifier.

Every module here imports only the standard library and `cryptography`, so the offline verifier
(`python -m consortium.verify`) and the site agent can use them. See docs/evidence.md.
"""
