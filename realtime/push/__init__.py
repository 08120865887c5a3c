"""Web Push for members who are away (PROTOCOL 14): the VAPID key (`vapid.py`), the
endpoint rules (`endpoints.py`), subscriptions (`subscriptions.py`, REST in
`api.py`) and the encrypted request (`webpush.py`). The pushes themselves leave
through the outbox with the webhooks (realtime/hooks/)."""
