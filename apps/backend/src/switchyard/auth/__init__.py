"""Identity: users, tokens, API keys, scopes and the caller's tenant."""
