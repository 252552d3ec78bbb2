"""xDeepServe on ordinary machines: disaggregated serving for Mixture-of-Experts LLMs."""

__version__ = "0.1.0"
