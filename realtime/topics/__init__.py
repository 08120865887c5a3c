"""Topics (PROTOCOL 7): the /ws/stream/ consumer, names and namespaces, the topic store,
fan-out, REST and the demo feed. `publish()` / `apublish()` are the documented way in."""

from realtime.topics.service import apublish, publish

__all__ = ["apublish", "publish"]
