"""The standing reliability suite: bounded, loopback-only, marked slow (see README, Reliability)."""
