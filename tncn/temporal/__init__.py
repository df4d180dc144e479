"""Temporal models: P-TNCN (local learning, no BPTT)."""
