"""mlxd: an Ollama-compatible HTTP daemon that runs models with MLX."""

__version__ = "0.1.0"
# The Ollama API version we answer on /api/version (clients gate features on it).
OLLAMA_COMPAT_VERSION = "0.12.6"
