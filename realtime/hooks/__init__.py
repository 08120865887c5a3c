"""Events to the application's backend (PROTOCOL 13): the outbox written with each
change (`outbox.py`), worked as a queue by any node (`queue.py`), signed
(`signing.py`) and delivered by each node's `NodePart` (`node.py`)."""
