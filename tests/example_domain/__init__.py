"""The worked example of docs/adding-a-domain.md: a product's own domain, built by the
guide's steps outside the package and switched on with DOMAIN_PACKAGES
(tests/e2e/test_example_domain.py)."""
