"""OAuth2 client credentials (RFC 6749 §4.4): a tenant's machine clients and the token endpoint."""
