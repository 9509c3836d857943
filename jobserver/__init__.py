"""A faithful simulation of the one-connection-per-account job server, and the jobclient."""
