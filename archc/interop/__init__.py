"""Interoperability with other libraries' checkpoints (archc.interop.hf: transformers)."""
