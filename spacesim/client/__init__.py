"""Synthetic WebRTC clients: speakers that publish marked Opus, listeners that measure it."""
