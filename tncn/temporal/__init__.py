"""Temporal models: the P-TNCN (local learning, no BPTT; ``ptncn.py``) and the RNN/GRU/LSTM
baselines trained by full or truncated BPTT (``bptt*.py``), each with its sequence learner."""
