"""Turning request inputs (text, token ids, chat messages) into model sequences."""
