"""Tests of the transparency log: tree, proofs, notes, leaves and the owner's checks."""
