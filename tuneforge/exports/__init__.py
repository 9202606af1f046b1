"""Exports of a registered version for serving engines: a merged Hugging Face checkpoint, a
PEFT adapter checked against what vLLM loads, and GGUF for llama.cpp and Ollama
(`tuneforge export`; `registry.export` logs them with every version)."""
