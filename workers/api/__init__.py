"""The HTTP API (`jobctl api`): every job family over authenticated HTTP, described by OpenAPI."""
