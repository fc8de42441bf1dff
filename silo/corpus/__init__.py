"""The licensed corpus: Open License Corpus-style documents and where they come from.

    jsonl   reading, validating, filtering, deduplicating and splitting JSONL documents
    debian  building the shipped corpus from Debian packages
    olc     exporting configurations of the Open License Corpus from the hub
"""
