"""The datastore's transparency log: an append-only Merkle log of every change that
decides what a datastore may use, with checkpoints a data owner can check.

    merkle   RFC 9162 tree hashes over stored complete subtrees; inclusion and
             consistency proofs and their client-side checks
    keys     Ed25519 signer and verifier keys in note form, and the key file
    note     C2SP signed notes and tlog-checkpoint bodies
    leaf     the leaf format: what one log entry commits to
    history  a document's leaves replayed: live, opted out, purged or never added
    verify   the data owner's checks of a receipt and of a document's history

Storage of the leaves and hashes belongs to the document table; these modules only see
it through a reader callable, and the verifier only through a fetch callable.
"""
