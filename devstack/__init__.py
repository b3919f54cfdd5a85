"""Local stand-ins for Adobe and an SMTP server, plus the demo runner. Never deployed."""
