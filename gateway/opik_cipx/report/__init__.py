"""Read-only views over the spool for people: ``stats`` and ``explain``. They work whether the
gateway is up or down, and never write."""
