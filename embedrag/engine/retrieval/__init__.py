"""Vectors to hits: exact search, BM25, LanceDB tables."""
