"""Equivalence of soma-d2 with the official SoMA code (ysj9909/SoMA), run in two processes.

The official half runs in a side environment (``setup_side_env.sh``) and writes a bundle; the
soma-d2 half runs in the project's environment and compares. See README.md.
"""
