"""Language models over retrieval: RAG, query writers, generation, answer evaluation, captions."""
