"""Emulated boards: real board software stacks run on this machine (see docs/emulated-boards.md)."""
