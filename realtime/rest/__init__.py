"""The REST surface's shared rules: one error shape (PROTOCOL 9), input parsing, OpenAPI."""
