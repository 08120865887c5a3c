"""The node: runtime, hub, registry of live sockets, control messages, delivery cursors."""
