"""Chat (PROTOCOL 6): the /ws/chat/ consumer, conversations, messages, presence, REST."""
