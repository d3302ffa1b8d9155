"""Command-line entry points (bin/* are thin wrappers around these)."""
