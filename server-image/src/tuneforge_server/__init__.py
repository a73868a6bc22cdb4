"""Tuneforge's vLLM server launcher: fetch the base model and adapters into the pod, pre-flight
them against their content digests, and start vLLM's OpenAI-compatible server on them.

Light modules (``config``, ``args``, ``digest``, ``preflight``, ``probe``) import no torch and no
vLLM, so the operator's tests and the pure unit tests can use them on any machine.
"""
