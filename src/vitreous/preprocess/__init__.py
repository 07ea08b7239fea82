"""Micrograph preprocessing: CTF estimation, exposure curation, picking, extraction (parallel over micrographs)."""
