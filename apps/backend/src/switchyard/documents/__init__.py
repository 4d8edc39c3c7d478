"""Knowledge documents: upload, ingestion into vectors and graph, search and cited answers."""
