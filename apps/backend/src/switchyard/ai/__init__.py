"""The LLM and knowledge-graph features of the API, over the backing services."""
