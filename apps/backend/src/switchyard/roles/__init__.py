"""One module per SERVICE_TYPE; `cli` dispatches to them."""
