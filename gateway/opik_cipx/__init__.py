"""opik-cipx: a local gateway between Claude Code and the Anthropic API."""

__version__ = "0.1.0"
