"""Small helpers shared by every layer; nothing here knows about models."""
