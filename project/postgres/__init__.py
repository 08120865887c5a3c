"""Django's PostgreSQL backend with the node's pool failing fast while the server is
unreachable (`base.py`)."""
