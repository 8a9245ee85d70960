"""Security pieces that the gateway and the HTTP app install: each module holds one
(the Origin allow-list, TLS, …); docs/security.md gives the threat model."""
