"""The HTTP layer: pure ASGI middleware, RFC 9457 problems, offline docs."""
