"""Data files shipped with vitreous (see README.md here)."""
