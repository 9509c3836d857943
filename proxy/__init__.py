"""jobproxy: blocking HTTP job requests turned into callback jobs."""
