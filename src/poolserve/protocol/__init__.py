"""Pydantic wire types: the contract with vLLM clients. No torch here."""
