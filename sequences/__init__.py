"""Sequence data for tncn: text corpora, images, videos and continual-learning streams."""
