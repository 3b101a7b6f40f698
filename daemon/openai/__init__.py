"""The ``/v1`` compatibility API (OpenAI's, and Anthropic's ``/v1/messages``), translated
onto the native routes as Ollama's middleware does (reference §5).

``convert`` turns OpenAI requests into native bodies, ``native`` runs a native route
in-process, ``shapes`` and ``stream`` turn native answers into OpenAI's objects and
server-sent events; ``responses`` and ``anthropic`` do both for the Responses and
Messages APIs; ``routes`` ties them together.
"""

from daemon.openai.routes import routes

__all__ = ["routes"]
