"""OpenAI-compatible ``/v1`` API, translated onto the native routes (reference §5).

``convert`` turns OpenAI requests into native bodies, ``native`` runs a native route
in-process, ``shapes`` and ``stream`` turn native answers into OpenAI's objects and
server-sent events, ``routes`` ties them together.
"""

from daemon.openai.routes import routes

__all__ = ["routes"]
